"""Official confs are accepted whole; typos and contradictions are clear errors."""

from __future__ import annotations

import pytest

import models
from models.config import ConfigError, unet_config
from tests.conftest import load_reference

# face_example.yml of the official RePaint repository, as yaml.safe_load returns it.
FACE_EXAMPLE = {
    "attention_resolutions": "32,16,8", "class_cond": False, "diffusion_steps": 1000,
    "learn_sigma": True, "noise_schedule": "linear", "num_channels": 256, "num_head_channels": 64,
    "num_heads": 4, "num_res_blocks": 2, "resblock_updown": True, "use_fp16": False,
    "use_scale_shift_norm": True, "classifier_scale": 4.0, "lr_kernel_n_std": 2, "num_samples": 100,
    "show_progress": True, "timestep_respacing": "250", "use_kl": False, "predict_xstart": False,
    "rescale_timesteps": False, "rescale_learned_sigmas": False, "classifier_use_fp16": False,
    "classifier_width": 256, "classifier_depth": 2, "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True, "classifier_resblock_updown": True,
    "classifier_pool": "attention", "num_heads_upsample": -1, "channel_mult": "", "dropout": 0.0,
    "use_checkpoint": False, "use_new_attention_order": False, "clip_denoised": True,
    "use_ddim": False, "latex_name": "RePaint", "method_name": "Repaint", "image_size": 256,
    "model_path": "./data/pretrained/celeba256_250000.pt", "name": "face_example",
    "inpa_inj_sched_prev": True, "n_jobs": 1, "print_estimated_vars": True,
    "inpa_inj_sched_prev_cumnoise": False,
    "schedule_jump_params": {"t_T": 250, "n_sample": 1, "jump_length": 10, "jump_n_sample": 10},
    "data": {"eval": {"paper_face_mask": {"mask_loader": True, "image_size": 256}}},
}


def test_whole_official_conf_is_accepted():
    config = unet_config(FACE_EXAMPLE)
    resolved = load_reference("adm_state_dict_keys.json")["models"]["celeba256"]["resolved_unet_kwargs"]
    assert list(config.channel_mult) == resolved["channel_mult"]
    assert list(config.attention_ds) == resolved["attention_resolutions(ds factors)"]
    assert config.num_heads_upsample == resolved["num_heads_upsample"]
    assert config.time_embed_dim == resolved["time_embed_dim"]
    assert models.build_diffusion(FACE_EXAMPLE).default_steps == 250


def test_typo_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="num_chanels.*did you mean 'num_channels'"):
        models.build_unet({**FACE_EXAMPLE, "num_chanels": 128})
    with pytest.raises(ConfigError, match="unknown config key"):
        models.build_diffusion({"diffusion_step": 1000})


@pytest.mark.parametrize("change, message", [
    ({"num_head_channels": 48}, "not divisible"),
    ({"attention_resolutions": "32,16,7"}, "never occurs"),
    ({"channel_mult": ""  , "image_size": 48}, "no default"),
    ({"learn_sigma": "maybe"}, "true or false"),
    ({"dropout": 1.5}, "dropout"),
    ({"num_channels": 48, "num_head_channels": 16}, "multiple of 32"),
])
def test_contradictions_are_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        models.build_unet({**FACE_EXAMPLE, **change})


def test_diffusion_contradictions_are_errors():
    with pytest.raises(ConfigError, match="contradict"):
        models.build_diffusion({"learn_sigma": True, "sigma_small": True})
    with pytest.raises(ConfigError, match="cannot take"):
        models.build_diffusion({"diffusion_steps": 100, "timestep_respacing": "250"})
    with pytest.raises(ConfigError, match="noise_schedule"):
        models.build_diffusion({"noise_schedule": "quadratic"})
