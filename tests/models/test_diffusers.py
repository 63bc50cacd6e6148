"""diffusers DDPM folders as models: built by diffusers itself, read into our diffusion, checked
against diffusers' own scheduler (coefficient tables and whole sampling runs with the same noise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models
from models.config import ConfigError
from models.diffusers_folder import DiffusersFolderError, read_folder
from models.config import space_timesteps
from models.sampler_settings import DDNMSettings, RePaintSettings

diffusers = pytest.importorskip("diffusers")  # the optional extra; CI installs it

SIZE = 16


def tiny_unet(*, out_channels: int = 3, seed: int = 0) -> "diffusers.UNet2DModel":
    """A 16 px UNet2DModel with an attention block (177k parameters), seeded random weights."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=out_channels, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 attention_head_dim=8)
    # diffusers zero-initialises nothing important, but its output scale is small: widen it so
    # that clipping and the variance channels matter in the runs below.
    with torch.no_grad():
        unet.conv_out.weight.mul_(4)
    return unet.eval()


def save_pipeline(folder: Path, *, prediction: str = "epsilon", variance: str = "fixed_small",
                  safe: bool = True, seed: int = 0, **scheduler) -> Path:
    learned = variance in ("learned", "learned_range")
    unet = tiny_unet(out_channels=6 if learned else 3, seed=seed)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction, variance_type=variance,
                                    **scheduler)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder, safe_serialization=safe)
    return folder


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    return save_pipeline(tmp_path_factory.mktemp("ddpm") / "ddpm-tiny-16")


# --- reading folders ----------------------------------------------------------------------------

def test_a_pipeline_folder_is_a_model_named_after_it(pipeline_dir):
    preset = models.resolve_model(str(pipeline_dir))
    assert preset.name == "ddpm-tiny-16" and preset.image_size == SIZE and preset.source == "diffusers"
    entry = preset.describe(classifier=False)
    assert entry["source"] == "diffusers" and entry["diffusion_steps"] == 1000 and not entry["class_cond"]
    assert "DDPMPipeline" in entry["provenance"] and entry["defaults"]["steps"] == 250
    assert models.resolve_model(f"mine={pipeline_dir}").name == "mine"


def test_the_network_is_diffusers_own_forward(pipeline_dir):
    loaded = models.load_preset(models.resolve_model(str(pipeline_dir)))
    reference = diffusers.UNet2DModel.from_pretrained(pipeline_dir / "unet").eval()
    x, t = torch.randn(2, 3, SIZE, SIZE), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, t), reference(x, t).sample)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_bare_unet_folders_load_from_safetensors_and_bin(tmp_path, safe):
    unet = tiny_unet(seed=3)
    unet.save_pretrained(tmp_path / "unet-only", safe_serialization=safe)
    spec = read_folder(tmp_path / "unet-only")
    assert spec.weights_format == ("safetensors" if safe else "bin") and spec.scheduler_class == "DDPMScheduler"
    loaded = models.load_preset(models.resolve_model(str(tmp_path / "unet-only")))
    x, t = torch.randn(1, 3, SIZE, SIZE), torch.tensor([42])
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, t), unet(x, t).sample)


def test_a_bin_file_with_code_in_it_is_refused_not_run(tmp_path):
    """`.bin` files are read with weights_only=True: a pickle that calls a function is an error."""
    folder = tmp_path / "evil"
    tiny_unet().save_pretrained(folder, safe_serialization=False)

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"conv_in.weight": Payload()}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(models.CheckpointError, match="cannot read checkpoint"):
        models.load_preset(models.resolve_model(str(folder)))
    assert not (tmp_path / "pwned").exists()


def test_old_attention_key_names_load(tmp_path):
    """google/ddpm-* files predate diffusers' attention rewrite: query/key/value/proj_attn."""
    from safetensors.torch import save_file

    unet = tiny_unet(seed=5)
    unet.save_pretrained(tmp_path / "old")
    old = {}
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for key, value in unet.state_dict().items():
        for new, legacy in renames.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{legacy}.")
        old[key] = value.contiguous()
    assert any(".query." in k for k in old)
    save_file(old, tmp_path / "old" / "diffusion_pytorch_model.safetensors")
    loaded = models.load_preset(models.resolve_model(str(tmp_path / "old")))
    x, t = torch.randn(1, 3, SIZE, SIZE), torch.tensor([9])
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, t), unet(x, t).sample)


def test_weights_of_another_network_name_the_keys(tmp_path, pipeline_dir):
    folder = tmp_path / "mismatch"
    tiny_unet().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "block_out_channels": [16, 16]}))
    with pytest.raises(models.CheckpointError, match="(?s)does not fit.*shape mismatches: down_blocks"):
        models.load_preset(models.resolve_model(str(folder)))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("where, changes, message", [
    ("scheduler/scheduler_config.json", {"prediction_type": "flow"}, "prediction_type 'flow' is not supported"),
    ("scheduler/scheduler_config.json", {"variance_type": "learned_range"}, "twice as many output channels"),
    ("scheduler/scheduler_config.json", {"variance_type": "learned"}, "'learned' .* is not supported"),
    ("scheduler/scheduler_config.json", {"thresholding": True}, "thresholding"),
    ("scheduler/scheduler_config.json", {"rescale_betas_zero_snr": True}, "zero_snr"),
    ("scheduler/scheduler_config.json", {"beta_schedule": "exp2"}, "beta_schedule 'exp2'"),
    ("scheduler/scheduler_config.json", {"_class_name": "ScoreSdeVeScheduler"}, "not describe a discrete DDPM"),
    ("unet/config.json", {"_class_name": "UNet2DConditionModel"}, "text- or image-conditioned"),
    ("unet/config.json", {"num_class_embeds": 10}, "class-conditional"),
    ("unet/config.json", {"in_channels": 4, "out_channels": 4}, "only RGB"),
    ("unet/config.json", {"sample_size": [16, 32]}, "not square"),
    ("model_index.json", {"vae": ["diffusers", "AutoencoderKL"]}, "latent diffusion"),
])
def test_unsupported_configs_are_clear_errors(tmp_path, pipeline_dir, where, changes, message):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(pipeline_dir, folder)
    _edit_json(folder / where, **changes)
    with pytest.raises(DiffusersFolderError, match=message):
        models.resolve_model(str(folder))


def test_folder_problems_are_clear_errors(tmp_path, pipeline_dir):
    with pytest.raises(DiffusersFolderError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffusersFolderError, match="neither model_index.json"):
        models.resolve_model(str(tmp_path / "empty"))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((pipeline_dir / "unet" / "config.json").read_text())
    with pytest.raises(DiffusersFolderError, match="has no weights"):
        models.resolve_model(str(tmp_path / "noweights"))
    with pytest.raises(ConfigError, match="unknown model 'celeb256'"):
        models.resolve_model("celeb256")
    with pytest.raises(ConfigError, match="model name"):
        models.parse_model_ref(f"Bad Name={pipeline_dir}")


def test_what_the_model_is_for_comes_from_its_name_card_and_sidecar(tmp_path, pipeline_dir):
    import shutil

    folder = tmp_path / "ddpm-ema-church-256"
    shutil.copytree(pipeline_dir, folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- pytorch\n---\n# DDPM church\n")
    entry = models.resolve_model(str(folder)).describe(classifier=False)
    assert "church" in entry["domain"] and entry["photographic"] is True and entry["framing"] == "region"
    assert entry["licence"].startswith("apache-2.0")
    (folder / "repaint.json").write_text(json.dumps({"domain": "my sketches", "photographic": False,
                                                     "framing": "whole", "licence": "CC0"}))
    entry = models.resolve_model(str(folder)).describe(classifier=False)
    assert (entry["domain"], entry["photographic"], entry["framing"], entry["licence"]) == \
        ("my sketches", False, "whole", "CC0")
    (folder / "repaint.json").write_text(json.dumps({"domian": "typo"}))
    with pytest.raises(DiffusersFolderError, match="unknown key"):
        models.resolve_model(str(folder))


# --- our process against DDPMScheduler's ----------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_coefficient_tables_match_ddpm_scheduler(tmp_path, schedule):
    folder = save_pipeline(tmp_path / "m", beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    diffusion = models.load_preset(models.resolve_model(str(folder))).diffusion
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    ours = diffusion.schedule(None)
    # diffusers keeps its tables in float32; ours are float64.
    torch.testing.assert_close(ours.betas.float(), scheduler.betas, rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=2e-5, atol=1e-7)
    # Respaced to 50 steps as diffusers' "leading" spacing does (every 20th step): the variance of
    # every reverse step, which diffusers derives step by step.
    config = diffusion.config
    respaced = models.Diffusion(config=type(config)(**{**config.__dict__, "timestep_respacing": "ddim50"}),
                                mean_type=diffusion.mean_type, var_type=diffusion.var_type)
    scheduler.set_timesteps(50)
    table = respaced.schedule(None)
    assert list(reversed(table.timestep_map)) == scheduler.timesteps.tolist()
    for i, t in enumerate(table.timestep_map):
        if i > 0:
            # diffusers computes 1 - alphas_cumprod in float32: near t = 0 (cosine) that loses ~4 digits.
            torch.testing.assert_close(float(table.posterior_variance[i]), float(scheduler._get_variance(t)),
                                       rtol=1e-3, atol=1e-10)


CASES = [("epsilon", "fixed_small", True), ("v_prediction", "fixed_small", True), ("sample", "fixed_large", True),
         ("epsilon", "learned_range", True), ("epsilon", "fixed_small", False)]


@pytest.mark.parametrize("prediction, variance, clip", CASES,
                         ids=[f"{p}-{v}-{'clip' if c else 'noclip'}" for p, v, c in CASES])
def test_repaint_without_a_mask_is_ddpm_schedulers_sampling_with_the_same_noise(tmp_path, prediction, variance, clip):
    """Oracle: with nothing known and no resampling, our RePaint is ancestral DDPM sampling, which
    diffusers' DDPMScheduler also implements. Fed the same noise (each sample's generator: x_T,
    then per step the step noise and the known region's noise), the two runs agree."""
    folder = save_pipeline(tmp_path / "m", prediction=prediction, variance=variance, clip_sample=clip)
    loaded = models.load_preset(models.resolve_model(str(folder)))
    steps, seed = 25, 7
    image = torch.zeros(1, 3, SIZE, SIZE)
    nothing_known = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool)
    ours = models.inpaint(loaded.unet, loaded.diffusion, image, nothing_known, seed=seed,
                          sampler=RePaintSettings(steps=steps, jump_length=1, jump_n_sample=1))

    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(timesteps=list(reversed(space_timesteps(1000, str(steps)))))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((3, SIZE, SIZE), generator=generator)[None]
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps, start=1):
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
            if k >= 2:  # our draw for the known region, unused with nothing known
                torch.randn((3, SIZE, SIZE), generator=generator)
    # float32 tables (diffusers) against float64 ones rounded to float32 (ours): seen 3e-6 to 1e-4
    # relative to the result's scale; a wrong variance, prediction or noise differs by O(0.1).
    scale = max(1.0, float(x.abs().max()))
    assert (ours - x).abs().max() < 1e-3 * scale
    assert x.abs().max() > 0.5  # a real image-scale result, not a collapsed one


def test_repaint_and_ddnm_keep_the_known_pixels_and_use_the_model(pipeline_dir):
    loaded = models.load_preset(models.resolve_model(str(pipeline_dir)))
    image = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    keep = torch.ones(2, 1, SIZE, SIZE, dtype=torch.bool)
    keep[..., 4:12, 4:12] = False
    for sampler in (RePaintSettings(steps=20, jump_length=5, jump_n_sample=2), DDNMSettings(steps=10)):
        out = models.inpaint(loaded.unet, loaded.diffusion, image, keep, sampler=sampler, seed=1)
        assert torch.equal(out[keep.expand_as(out)], image[keep.expand_as(image)])
        filled = out[~keep.expand_as(out)]
        assert filled.abs().max() <= 1 and (filled - image[~keep.expand_as(image)]).abs().mean() > 0.05
