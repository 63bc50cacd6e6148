"""Checkpoint files: weights_only reads, sha256 pinning, dtypes, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

import models
from models.checkpoints import CheckpointError, read_state_dict, sha256_of
from tests.conftest import REFERENCE, load_reference


def test_reference_checkpoint_loads_through_the_preset_path(tmp_path):
    path = REFERENCE / "tiny_unet_A.pt"
    loaded = models.load_preset("tiny", checkpoint=path)
    io = load_reference("tiny_unet_A_io.pt")
    with torch.inference_mode():
        torch.testing.assert_close(loaded.unet(io["x"], io["t"]), io["out"], atol=1e-5, rtol=1e-5)


def test_sha256_is_checked(tmp_path):
    path = REFERENCE / "tiny_unet_A.pt"
    assert read_state_dict(path, sha256=sha256_of(path))
    with pytest.raises(CheckpointError, match="sha256"):
        read_state_dict(path, sha256="0" * 64)


def test_fp16_file_loads_into_fp32_network(tmp_path):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in load_reference("tiny_unet_A.pt").items()}, path)
    loaded = models.load_preset("tiny", checkpoint=path)
    assert loaded.unet.dtype == torch.float32


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(path)


def test_missing_file_and_missing_checkpoint_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="needs its checkpoint"):
        models.load_preset("celeba256")


def test_wrong_network_for_the_file_names_the_config(tmp_path):
    path = REFERENCE / "tiny_unet_A.pt"
    with pytest.raises(CheckpointError, match="(?s)missing keys.*expected config"):
        with torch.device("meta"):
            models.load_preset("celeba256", checkpoint=path)
