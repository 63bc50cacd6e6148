"""The torch-free job contract agrees with the models it describes."""

from __future__ import annotations

import itertools

import models
from worker import jobs
from worker.jobs import JobStatus


def test_count_evaluations_equals_the_jump_schedule():
    for steps, jl, jn in itertools.product((1, 7, 20, 50, 250), (1, 3, 10, 300), (1, 2, 10)):
        expected = models.count_model_evaluations(models.jump_schedule(steps, jl, jn))
        assert jobs.count_evaluations(steps, jl, jn) == expected, (steps, jl, jn)
    assert jobs.count_evaluations(250, 10, 10) == 2410


def test_final_statuses():
    assert {s for s in JobStatus if s.final} == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}


def test_contract_module_is_torch_free():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(jobs))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert not {"torch", "models"} & imported
