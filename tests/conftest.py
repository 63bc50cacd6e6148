"""Shared fixtures: paths to the golden reference data copied from ../shared/reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


def load_reference(name: str):
    path = REFERENCE / name
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return torch.load(path, weights_only=True)
