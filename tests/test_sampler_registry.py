"""A sampler is its settings class, its math and one registry line: a throwaway sampler,
registered here and nowhere else, shows up in the API's form and validation, GET /models, the
CLI's flags, a worker's batch and the docs' parameter table (the page reads GET /models: its test
injects the same kind of sampler, tests/test_page.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import pytest
import torch
from fastapi.testclient import TestClient

import models
from models import sampler_settings, samplers
from models.diffusion import COEFFICIENTS, predict_xstart
from models.sampler_settings import SETTINGS, SamplerSettings, _param, schedule_from
from models.schedule import count_model_evaluations, jump_schedule
from tests.models.test_repaint import DIFFUSION, NoiseOracle, _images
from tests.service.test_api import post, tiny_description  # noqa: F401 - the fixture

ROOT = Path(__file__).parents[1]


@dataclass(frozen=True, kw_only=True)
class HopSettings(SamplerSettings):
    """Clean estimate, known pixels pasted, straight to the next level with fresh noise."""

    name: ClassVar[str] = "hop"
    summary: ClassVar[str] = "a throwaway sampler for the registry test"
    implementation: ClassVar[str] = f"{__name__}:Hop"
    schedule: ClassVar[Mapping[str, str | int]] = schedule_from(jump_length="hops", jump_n_sample=2)
    steps: int = _param(20, "steps", minimum=2)
    hops: int = _param(5, "stretch re-noised and redone once", minimum=1)
    wiggle: float = _param(0.5, "unused", minimum=0.0, maximum=1.0, advanced=True)


_SQRT_AC, _SQRT_1M_AC = COEFFICIENTS.index("sqrt_ac"), COEFFICIENTS.index("sqrt_1m_ac")


class Hop(samplers.Sampler):
    settings = HopSettings

    def move_up(self, batch, slot, state):
        while state.next > state.current:
            state.position += 1
        row = state.rows[state.current]
        batch.x[slot] = row[_SQRT_AC] * batch.pred_xstart[slot] + row[_SQRT_1M_AC] * state.randn(
            batch.x.shape[1:], batch.device)

    def network_input(self, rows):
        rows.scratch["noise"] = rows.noise()
        return rows.take(rows.batch.x)

    def update(self, rows, x_in, model_output, *, classifier, clip_denoised):
        batch, c = rows.batch, rows.c
        x0 = predict_xstart(batch.diffusion, model_output, x_in, c, clip_denoised=clip_denoised)
        x0 = torch.where(rows.take(batch.keep), rows.take(batch.gt), x0)
        return c["sqrt_ac_prev"] * x0 + c["sqrt_1m_ac_prev"] * rows.scratch["noise"], x0


@pytest.fixture()
def hop_registered():
    sampler_settings.register(HopSettings)
    try:
        yield HopSettings
    finally:
        SETTINGS.pop(HopSettings.name)
        samplers._INSTANCES.pop(HopSettings, None)


def test_the_worker_s_batch_runs_a_registered_sampler(hop_registered):
    image, target, keep = _images()
    settings = HopSettings(steps=20, hops=5)
    oracle = NoiseOracle(target)
    out = models.inpaint(oracle, DIFFUSION, image, keep, sampler=settings, seed=1)
    assert len(oracle.calls) == settings.evaluations == count_model_evaluations(
        jump_schedule(20, jump_length=5, jump_n_sample=2, n_sample=1))
    unknown = keep.expand_as(out) < 0.5
    assert torch.allclose(out[unknown], target[unknown], atol=1e-4)  # the oracle's target, where asked
    assert torch.equal(out[~unknown], image[~unknown])


def test_the_api_form_models_and_validation_take_a_registered_sampler(hop_registered, redis_server, redis_db,
                                                                      tiny_description):
    from service.app import create_app
    from service.settings import ApiSettings
    from worker import jobs

    redis_db.hset(jobs.models_key(), "tiny", json.dumps(tiny_description))
    settings = ApiSettings(redis_url=redis_server.url, model="tiny")
    with TestClient(create_app(settings)) as client:
        schema = client.get("/openapi.json").json()
        ref = schema["paths"]["/inpaint"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        form = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
        assert {"hops", "wiggle"} <= set(form)
        assert "sampler hop" in form["hops"]["description"]

        listed = {s["name"]: s for s in client.get("/models").json()["samplers"]}["hop"]
        assert [p["name"] for p in listed["parameters"]] == ["steps", "hops", "wiggle"]
        assert [p["advanced"] for p in listed["parameters"]] == [False, False, True]
        assert listed["schedule"]["jump_length"] == "hops" and listed["schedule"]["jump_n_sample"] == 2

        accepted = post(client, sampler="hop", steps=30, hops=3, wiggle=0.25)
        assert accepted.status_code == 202, accepted.text
        params = client.get(f"/jobs/{accepted.json()['id']}").json()["params"]
        assert params["sampler"] == "hop" and (params["hops"], params["wiggle"]) == (3, 0.25)
        assert params["evaluations_per_sample"] == HopSettings(steps=30, hops=3).evaluations

        for fields, words in (({"sampler": "hop", "eta": 0.5}, "eta is a parameter of sampler ddnm, not of hop"),
                              ({"hops": 3}, "hops is a parameter of sampler hop, not of repaint"),
                              ({"sampler": "hop", "wiggle": 2}, "wiggle must be at most 1.0")):
            refused = post(client, **fields)
            assert refused.status_code == 422 and words in refused.json()["detail"], refused.text


def test_the_cli_offers_a_registered_sampler_s_flags(hop_registered):
    from service.cli import build_parser

    _, submit = build_parser()
    args = submit.parse_args(["--sampler", "hop", "--hops", "3", "--wiggle", "0.25", "-o", "out", "a.png", "m.png"])
    assert (args.sampler, args.hops, args.wiggle) == ("hop", 3, 0.25)
    assert "--hops" in submit.format_help()


def test_the_docs_parameter_table_is_the_registry_s():
    """docs/api.md carries `parameters_markdown()` between its markers (rewrite it with
    `python -m models.sampler_settings --markdown`)."""
    text = (ROOT / "docs" / "api.md").read_text()
    begin, end = "<!-- sampler parameters: begin -->\n", "<!-- sampler parameters: end -->"
    assert text[text.index(begin) + len(begin):text.index(end)] == sampler_settings.parameters_markdown()
