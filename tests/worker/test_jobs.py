"""The torch-free job contract agrees with the models it describes."""

from __future__ import annotations

import ast
import inspect
import itertools

import pytest

import models
from models import config, diffusers_folder, registry, sampler_settings, schedule
from models.sampler_settings import DDNMSettings, RePaintSettings
from worker import catalog, jobs, ledger, params, rqside
from worker.jobs import JobStatus
from worker.params import JobParams, ParamError, check_for_model, count_evaluations, resolve_sampling
from worker.presets import PRESETS


def test_count_evaluations_equals_the_jump_schedule():
    for steps, jl, jn in itertools.product((1, 7, 20, 50, 250), (1, 3, 10, 300), (1, 2, 10)):
        expected = models.count_model_evaluations(models.jump_schedule(steps, jump_length=jl, jump_n_sample=jn))
        assert count_evaluations(steps, jl, jn) == expected, (steps, jl, jn)
    assert count_evaluations(250, 10, 10) == 2410


def test_final_statuses():
    assert {s for s in JobStatus if s.final} == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}


@pytest.mark.parametrize("module", [jobs, params, catalog, ledger, rqside, sampler_settings, schedule, registry,
                                    diffusers_folder, config])
def test_contract_modules_are_torch_free(module):
    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    # Of models, only its torch-free modules (relative imports inside models).
    torch_free = {"sampler_settings", "schedule", "registry", "diffusers_folder", "config"}
    imported -= torch_free | {f"models.{m}" for m in torch_free}
    assert not {"torch", "numpy"} & imported and not any(m.startswith("models") for m in imported), imported


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_the_catalog_describes_every_preset_as_its_worker_would(name):
    preset = models.get_preset(name)
    assert catalog.MODELS[name] == preset.describe(classifier=preset.has_classifier)
    assert set(catalog.MODELS) == set(models.PRESETS)


def test_job_params_round_trip_through_the_record():
    p = JobParams(seed=3, sampler=RePaintSettings(steps=50, jump_length=5, jump_n_sample=3), num_samples=2, preset="fast",
                  webhook={"url": "http://h/x", "events": ["completed"]}, image={"width": 4, "height": 4, "mode": "L"})
    record = p.to_record()
    assert record["evaluations_per_sample"] == p.evaluations == 140
    assert "class_label" not in record and record["preset"] == "fast"
    assert JobParams.from_record(record) == p


def _resolve(info, preset=None, sampler=None, max_evaluations=10_000, **fields):
    return resolve_sampling(info, preset=preset, sampler=sampler, fields=fields, max_evaluations=max_evaluations)


def test_one_set_of_rules_for_api_and_worker():
    tiny = catalog.MODELS["tiny"]
    assert _resolve(tiny, preset="paper") == RePaintSettings(steps=250, jump_length=10, jump_n_sample=10)
    assert _resolve(tiny, preset="paper", steps=100).steps == 100  # explicit fields override the preset
    with pytest.raises(ParamError, match="at most 1000"):
        _resolve(tiny, steps=1001, max_evaluations=10**9)
    with pytest.raises(ParamError, match="network evaluations"):
        _resolve(tiny, preset="paper", max_evaluations=100)
    with pytest.raises(ParamError, match="not class-conditional"):
        check_for_model(JobParams(seed=0, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1), class_label=1), tiny)
    with pytest.raises(ParamError, match="class_label is required"):
        check_for_model(JobParams(seed=0, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1)), catalog.MODELS["imagenet256"])


def test_every_preset_is_within_its_budget_and_runs_its_sampler():
    tiny = catalog.MODELS["tiny"]
    for name, preset in PRESETS.items():
        settings = _resolve(tiny, preset=name, max_evaluations=10**6)
        assert settings.name == preset.sampler
        assert preset.budget is None or settings.evaluations <= preset.budget, (name, settings.evaluations)


def test_a_sampler_takes_only_its_own_parameters():
    tiny = catalog.MODELS["tiny"]
    assert _resolve(tiny, sampler="ddnm") == DDNMSettings()
    assert _resolve(tiny, sampler="ddnm", eta=0.3, travel_length=5, travel_repeat=2) == DDNMSettings(
        eta=0.3, travel_length=5, travel_repeat=2)
    assert _resolve(tiny, jump2_length=3, jump2_n_sample=2, start_resampling=50).evaluations == RePaintSettings(
        jump2_length=3, jump2_n_sample=2, start_resampling=50).evaluations
    with pytest.raises(ParamError, match="eta is a parameter of sampler ddnm, not of repaint"):
        _resolve(tiny, eta=0.5)
    with pytest.raises(ParamError, match="jump_length is a parameter of sampler repaint, not of ddnm"):
        _resolve(tiny, sampler="ddnm", jump_length=5)
    with pytest.raises(ParamError, match="unknown sampler 'ddim'"):
        _resolve(tiny, sampler="ddim")
    with pytest.raises(ParamError, match="eta must be at most 1.0"):
        _resolve(tiny, sampler="ddnm", eta=1.5)
    with pytest.raises(ParamError, match="steps must be at least 2"):
        _resolve(tiny, sampler="ddnm", steps=1)
    with pytest.raises(ParamError, match="uses sampler ddnm, not repaint|uses sampler repaint, not ddnm"):
        _resolve(tiny, preset="paper", sampler="ddnm")


def test_a_schedule_from_a_client_is_never_built_past_the_limit():
    """Nested jumps multiply: 10^9 evaluations must be refused without building the schedule."""
    huge = dict(jump_n_sample=1000, jump2_length=5, jump2_n_sample=1000, jump3_length=2, jump3_n_sample=1000)
    with pytest.raises(ParamError, match=r"need more than 100,000 network evaluations per sample; the limit is "
                                         r"10,000 \(REPAINT_MAX_EVALUATIONS\)"):
        _resolve(catalog.MODELS["tiny"], max_evaluations=10_000, **huge)
    # Within ten times the limit, the refusal gives the count: 250 steps, jumps of 10, 30 times.
    with pytest.raises(ParamError, match="need 7,210 network evaluations per sample; the limit is 5,000"):
        _resolve(catalog.MODELS["tiny"], max_evaluations=5_000, steps=250, jump_length=10, jump_n_sample=30)


def test_job_records_from_before_samplers_read_as_repaint():
    old = {"seed": 1, "steps": 20, "jump_length": 5, "jump_n_sample": 2, "num_samples": 1, "strategy": "auto",
           "blend": None, "mask_dilate": 0, "output_format": "png", "evaluations_per_sample": 80, "image": {}}
    assert JobParams.from_record(old).sampler == RePaintSettings(steps=20, jump_length=5, jump_n_sample=2)


def test_ddnm_job_params_round_trip():
    p = JobParams(seed=3, sampler=DDNMSettings(steps=40, eta=0.5, travel_length=5, travel_repeat=2))
    record = p.to_record()
    assert record["sampler"] == "ddnm" and record["eta"] == 0.5 and "jump_length" not in record
    assert JobParams.from_record(record) == p and record["evaluations_per_sample"] == 75
