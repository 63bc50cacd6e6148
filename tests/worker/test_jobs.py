"""The torch-free job contract agrees with the models it describes."""

from __future__ import annotations

import ast
import inspect
import itertools

import pytest

import models
from worker import catalog, jobs, ledger, params, rqside
from worker.jobs import JobStatus
from worker.params import JobParams, ParamError, check_for_model, count_evaluations, resolve_sampling
from worker.runtime import describe_preset


def test_count_evaluations_equals_the_jump_schedule():
    for steps, jl, jn in itertools.product((1, 7, 20, 50, 250), (1, 3, 10, 300), (1, 2, 10)):
        expected = models.count_model_evaluations(models.jump_schedule(steps, jl, jn))
        assert count_evaluations(steps, jl, jn) == expected, (steps, jl, jn)
    assert count_evaluations(250, 10, 10) == 2410


def test_final_statuses():
    assert {s for s in JobStatus if s.final} == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}


@pytest.mark.parametrize("module", [jobs, params, catalog, ledger, rqside])
def test_contract_modules_are_torch_free(module):
    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert not {"torch", "models", "numpy"} & imported


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_the_catalog_describes_every_preset_as_its_worker_would(name):
    preset = models.get_preset(name)
    assert catalog.MODELS[name] == describe_preset(preset, classifier=preset.has_classifier)
    assert set(catalog.MODELS) == set(models.PRESETS)


def test_job_params_round_trip_through_the_record():
    p = JobParams(seed=3, steps=50, jump_length=5, jump_n_sample=3, num_samples=2, preset="fast",
                  webhook={"url": "http://h/x", "events": ["completed"]}, image={"width": 4, "height": 4, "mode": "L"})
    record = p.to_record()
    assert record["evaluations_per_sample"] == p.evaluations == 140
    assert "class_label" not in record and record["preset"] == "fast"
    assert JobParams.from_record(record) == p


def test_one_set_of_rules_for_api_and_worker():
    tiny = catalog.MODELS["tiny"]
    assert resolve_sampling(tiny, preset="fast", steps=None, jump_length=None, jump_n_sample=None,
                            max_evaluations=10_000) == {"steps": 50, "jump_length": 5, "jump_n_sample": 3}
    with pytest.raises(ParamError, match="at most 1000"):
        resolve_sampling(tiny, preset=None, steps=1001, jump_length=None, jump_n_sample=None, max_evaluations=10**9)
    with pytest.raises(ParamError, match="network evaluations"):
        resolve_sampling(tiny, preset="paper", steps=None, jump_length=None, jump_n_sample=None, max_evaluations=100)
    with pytest.raises(ParamError, match="not class-conditional"):
        check_for_model(JobParams(seed=0, steps=5, jump_length=5, jump_n_sample=1, class_label=1), tiny)
    with pytest.raises(ParamError, match="class_label is required"):
        check_for_model(JobParams(seed=0, steps=5, jump_length=5, jump_n_sample=1), catalog.MODELS["imagenet256"])
