"""Reading a local diffusers DDPM model folder (torch-free): what network, what process, what for.

Two layouts are accepted:
- a pipeline folder: `model_index.json`, `unet/` (config.json + weights) and `scheduler/`
  (scheduler_config.json), as `huggingface-cli download google/ddpm-ema-church-256` leaves it;
- a bare `UNet2DModel` folder: config.json + diffusion_pytorch_model.safetensors (or .bin), with
  an optional `scheduler_config.json` beside it or in `../scheduler/` (else DDPMScheduler's defaults).

The scheduler config is read into our own diffusion (beta schedule, `num_train_timesteps`,
`prediction_type`, `variance_type`, clipping), so every sampler of ours runs on the network. Only
pixel-space, unconditional `UNet2DModel`s with RGB images fit RePaint; anything else is refused
here with the reason, when the worker (or the API) starts, not at the first job. Optional
`repaint.json` in the folder says what the model is for (see `CARD_KEYS`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .config import ConfigError

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_FILE = "scheduler_config.json"

# Schedulers of discrete-time DDPM processes (betas over `num_train_timesteps`): their configs
# describe the same forward process, whatever sampler diffusers pairs them with.
DISCRETE_SCHEDULERS = {
    "DDPMScheduler", "DDIMScheduler", "RePaintScheduler", "PNDMScheduler", "DDPMParallelScheduler",
    "DDIMParallelScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
}
PREDICTION_TYPES = {"epsilon": "epsilon", "sample": "start_x", "v_prediction": "v"}
# diffusers' variance types as ours. "fixed_large_log" is beta_t as "fixed_large" is (its log);
# "learned" (the network outputs the variance itself) has no known checkpoint and is refused.
VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                  "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
                  "learned_range": "learned_range"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
# DDPMScheduler's defaults, for a bare UNet folder without a scheduler config.
DDPM_DEFAULTS = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
                 "beta_end": 0.02, "beta_schedule": "linear", "variance_type": "fixed_small",
                 "clip_sample": True, "clip_sample_range": 1.0, "prediction_type": "epsilon"}
# Pipeline components that mean a latent or text-conditioned model.
FOREIGN_COMPONENTS = {"vae": "a VAE (latent diffusion)", "vqvae": "a VQ-VAE (latent diffusion)",
                      "text_encoder": "a text encoder", "tokenizer": "a tokenizer", "bert": "a text encoder"}
CARD_KEYS = ("description", "domain", "photographic", "framing", "provenance", "licence")

# What the well-known DDPM checkpoints were trained on, by the folder's name (Hugging Face ids
# with '/' become '--' in hub caches; either spelling matches). A folder's repaint.json wins.
KNOWN_DOMAINS: tuple[tuple[str, dict], ...] = (
    (r"celeba[-_]?hq", {"domain": "aligned, centred photographs of faces (CelebA-HQ)", "framing": "whole",
                        "photographic": True}),
    (r"ffhq", {"domain": "aligned, centred photographs of faces (FFHQ)", "framing": "whole",
               "photographic": True}),
    (r"church", {"domain": "photographs of church exteriors (LSUN church)", "photographic": True}),
    (r"bedroom", {"domain": "photographs of bedrooms (LSUN bedroom)", "photographic": True}),
    (r"(^|[-_])cat([-_]|$)", {"domain": "photographs of cats (LSUN cat)", "photographic": True}),
    (r"cifar[-_]?10", {"domain": "tiny photographs of 10 object classes: planes, cars, birds, cats, deer, dogs, "
                                 "frogs, horses, ships, trucks (CIFAR-10)", "photographic": True}),
    (r"butterfl", {"domain": "photographs of butterflies", "photographic": True}),
    (r"anime|pokemon|sprite|pixel[-_]?art", {"domain": "drawn images (anime, sprites or similar)",
                                             "photographic": False}),
)


class DiffusersFolderError(ConfigError):
    """A folder that is not a diffusers DDPM model this service can run."""


@dataclass(frozen=True, kw_only=True)
class DiffusersSpec:
    """A diffusers model folder, read and checked: where the weights are and what they mean."""

    folder: Path
    unet_dir: Path
    weights: Path
    unet_config: Mapping[str, Any]
    scheduler_class: str
    pipeline_class: str | None
    num_train_timesteps: int
    betas: tuple[float, ...]
    prediction: str        # models.diffusion.MeanType value
    variance: str          # models.diffusion.VarianceType value
    clip_range: float | None
    image_size: int

    @property
    def weights_format(self) -> str:
        return "safetensors" if self.weights.suffix == ".safetensors" else "bin"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        raise DiffusersFolderError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise DiffusersFolderError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DiffusersFolderError(f"{path} is not a JSON object")
    return value


def _component_class(index: Mapping[str, Any], name: str) -> str | None:
    entry = index.get(name)
    if isinstance(entry, list) and len(entry) == 2 and entry[1]:
        return str(entry[1])
    return None


def _weights_file(unet_dir: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (unet_dir / name).is_file():
            return unet_dir / name
    # A single variant file (diffusion_pytorch_model.fp16.safetensors, ...), safetensors first.
    for suffix in (".safetensors", ".bin"):
        variants = sorted(unet_dir.glob(f"diffusion_pytorch_model.*{suffix}"))
        variants = [p for p in variants if not p.name.endswith(".index.json")]
        if len(variants) == 1:
            return variants[0]
    if any(unet_dir.glob("*.index.json")):
        raise DiffusersFolderError(f"{unet_dir} holds sharded weights (*.index.json): not supported; "
                                   f"save the UNet unsharded (save_pretrained(..., max_shard_size='10GB'))")
    if any(unet_dir.glob("*.ckpt")) or any(unet_dir.glob("*.pt")):
        raise DiffusersFolderError(f"{unet_dir} has no diffusion_pytorch_model.safetensors or .bin; a .pt or .ckpt "
                                   f"file is not a diffusers folder (official RePaint files: use their preset)")
    raise DiffusersFolderError(f"{unet_dir} has no weights: expected {' or '.join(WEIGHT_NAMES)} "
                               f"(files fetched with git need `git lfs pull`)")


def _check_unet(config: Mapping[str, Any], where: Path) -> int:
    """Refuse UNets RePaint cannot drive; returns the (square) image size."""
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        what = {"UNet2DConditionModel": "a text- or image-conditioned UNet (Stable Diffusion and the like)",
                "UNet2DConditionOutput": "a conditioned UNet"}.get(cls, f"a {cls}")
        raise DiffusersFolderError(f"{where}: {what} is not supported: RePaint needs an unconditional "
                                   f"pixel-space UNet2DModel (a DDPM)")
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        raise DiffusersFolderError(f"{where}: a class-conditional UNet2DModel (num_class_embeds/class_embed_type) "
                                   f"is not supported yet: serve an unconditional one")
    if config.get("time_embedding_type", "positional") != "positional":
        raise DiffusersFolderError(f"{where}: time_embedding_type {config['time_embedding_type']!r} is a "
                                   f"score-SDE (continuous-time) model, not a DDPM: not supported")
    in_channels = config.get("in_channels", 3)
    if in_channels != 3:
        raise DiffusersFolderError(f"{where}: in_channels={in_channels}: only RGB models (3 channels) are "
                                   f"supported; a latent or grayscale model is not")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise DiffusersFolderError(f"{where}: sample_size {size} is not square: not supported")
        size = size[0]
    if not isinstance(size, int) or size < 8:
        raise DiffusersFolderError(f"{where}: sample_size must be a whole number of pixels, got {size!r}")
    return size


def _linspace(start: float, end: float, n: int) -> list[float]:
    return [start + (end - start) * i / (n - 1) for i in range(n)] if n > 1 else [start]


def scheduler_betas(config: Mapping[str, Any]) -> tuple[float, ...]:
    """The base betas a diffusers scheduler config describes (float64 here; diffusers uses float32)."""
    n = int(config.get("num_train_timesteps", 1000))
    if n < 2:
        raise DiffusersFolderError(f"num_train_timesteps must be at least 2, got {n}")
    trained = config.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, list) or len(trained) != n:
            raise DiffusersFolderError(f"trained_betas must list num_train_timesteps={n} values")
        betas = [float(b) for b in trained]
    else:
        name = config.get("beta_schedule", "linear")
        start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
        if name == "linear":
            betas = _linspace(start, end, n)
        elif name == "scaled_linear":
            betas = [b * b for b in _linspace(start ** 0.5, end ** 0.5, n)]
        elif name == "squaredcos_cap_v2":
            def alpha_bar(t: float) -> float:
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        elif name == "sigmoid":
            betas = [1 / (1 + math.exp(-x)) * (end - start) + start for x in _linspace(-6, 6, n)]
        else:
            raise DiffusersFolderError(f"beta_schedule {name!r} is not supported (known: {', '.join(BETA_SCHEDULES)})")
    if not all(0 < b <= 1 for b in betas):
        raise DiffusersFolderError("the scheduler's betas must lie in (0, 1]")
    return tuple(betas)


def _process(config: Mapping[str, Any], unet_config: Mapping[str, Any], where: Path) -> dict:
    cls = config.get("_class_name", "DDPMScheduler")
    if cls not in DISCRETE_SCHEDULERS:
        raise DiffusersFolderError(f"{where}: scheduler {cls} does not describe a discrete DDPM process "
                                   f"(known: {', '.join(sorted(DISCRETE_SCHEDULERS))})")
    if config.get("rescale_betas_zero_snr"):
        raise DiffusersFolderError(f"{where}: rescale_betas_zero_snr makes the last level pure noise "
                                   f"(alpha_bar = 0), which RePaint's x_0 estimate cannot divide by: not supported")
    if config.get("thresholding"):
        raise DiffusersFolderError(f"{where}: dynamic thresholding (thresholding: true) is not supported; "
                                   f"set it false to use plain clipping")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise DiffusersFolderError(f"{where}: prediction_type {prediction!r} is not supported "
                                   f"(known: {', '.join(PREDICTION_TYPES)})")
    in_ch, out_ch = unet_config.get("in_channels", 3), unet_config.get("out_channels", 3)
    learned = out_ch == 2 * in_ch
    if out_ch not in (in_ch, 2 * in_ch):
        raise DiffusersFolderError(f"{where}: out_channels={out_ch} is neither in_channels ({in_ch}) nor twice it "
                                   f"(a learned variance)")
    variance = config.get("variance_type") or ("learned_range" if learned else "fixed_small")
    if variance == "learned":
        raise DiffusersFolderError(f"{where}: variance_type 'learned' (the network outputs the variance itself) "
                                   f"is not supported; 'learned_range' is")
    if variance not in VARIANCE_TYPES:
        raise DiffusersFolderError(f"{where}: variance_type {variance!r} is not supported "
                                   f"(known: {', '.join(VARIANCE_TYPES)})")
    if learned != (variance == "learned_range"):
        raise DiffusersFolderError(
            f"{where}: the UNet has out_channels={out_ch} but the scheduler's variance_type is {variance!r}: "
            + ("a learned variance needs variance_type 'learned_range'" if learned
               else "'learned_range' needs a UNet with twice as many output channels as input channels"))
    clip = config.get("clip_sample", True)
    return {
        "scheduler_class": cls,
        "num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
        "betas": scheduler_betas(config),
        "prediction": PREDICTION_TYPES[prediction],
        "variance": VARIANCE_TYPES[variance],
        "clip_range": float(config.get("clip_sample_range", 1.0)) if clip else None,
    }


def read_folder(folder: str | Path) -> DiffusersSpec:
    """Read and check a diffusers model folder (pipeline or bare UNet); no weights are read."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DiffusersFolderError(f"model folder {folder} does not exist (or is not a folder)")
    pipeline_class = None
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        pipeline_class = index.get("_class_name")
        foreign = [what for key, what in FOREIGN_COMPONENTS.items() if index.get(key)]
        if foreign:
            raise DiffusersFolderError(f"{folder} is a {pipeline_class or 'pipeline'} with {', '.join(foreign)}: "
                                       f"RePaint needs a pixel-space unconditional DDPM (a UNet2DModel and a scheduler)")
        unet_class = _component_class(index, "unet")
        if unet_class is None or not (folder / "unet").is_dir():
            raise DiffusersFolderError(f"{folder}/model_index.json names no unet (or unet/ is missing): "
                                       f"not a DDPM pipeline folder")
        unet_dir = folder / "unet"
        scheduler_path = folder / "scheduler" / SCHEDULER_FILE
        if not scheduler_path.is_file():
            raise DiffusersFolderError(f"{scheduler_path} is missing: the pipeline's noise schedule is unknown")
    elif (folder / "config.json").is_file():
        unet_dir = folder
        scheduler_path = next((p for p in (folder / SCHEDULER_FILE, folder.parent / "scheduler" / SCHEDULER_FILE)
                               if p.is_file()), None)
    else:
        raise DiffusersFolderError(f"{folder} is not a diffusers model folder: it has neither model_index.json "
                                   f"(a pipeline) nor config.json (a bare UNet2DModel)")
    unet_config = _read_json(unet_dir / "config.json")
    size = _check_unet(unet_config, unet_dir / "config.json")
    scheduler = DDPM_DEFAULTS if scheduler_path is None else {**_read_json(scheduler_path)}
    process = _process(scheduler, unet_config, scheduler_path or unet_dir)
    return DiffusersSpec(folder=folder, unet_dir=unet_dir, weights=_weights_file(unet_dir), unet_config=unet_config,
                         pipeline_class=pipeline_class, image_size=size, **process)


def _model_card_licence(folder: Path) -> str | None:
    """The `license:` of a Hugging Face model card's front matter (README.md), if the folder has one."""
    for path in (folder / "README.md", folder.parent / "README.md"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if text.startswith("---"):
            front = text[3:].split("\n---", 1)[0]
            match = re.search(r"^licen[cs]e:\s*['\"]?([^'\"\n]+)", front, re.MULTILINE)
            if match:
                return match.group(1).strip()
    return None


def model_card(spec: DiffusersSpec, name: str) -> dict:
    """What the model is for: the folder's repaint.json, else what its name and model card tell."""
    card: dict[str, Any] = {"domain": "", "photographic": None, "framing": "region"}
    key = f"{spec.folder.name} {name}".lower()
    for pattern, known in KNOWN_DOMAINS:
        if re.search(pattern, key):
            card.update(known)
            break
    if not card["domain"]:
        card["domain"] = ("not stated: the folder does not say what the model was trained on (add a repaint.json "
                          "with a 'domain'); expect good fills only on images like its training set")
    card["domain"] += f", {spec.image_size}x{spec.image_size}"
    licence = _model_card_licence(spec.folder)
    card["licence"] = (f"{licence}, according to the folder's model card (README.md)" if licence else
                       "not stated in the folder: check the terms of where the weights came from")
    card["provenance"] = (f"diffusers {spec.pipeline_class or 'UNet2DModel'} folder {spec.folder} "
                          f"({spec.weights.name})")
    card["description"] = (f"diffusers {spec.scheduler_class} model from {spec.folder.name}, "
                           f"{spec.image_size}x{spec.image_size}, {_PREDICTION_WORDS[spec.prediction]}, "
                           f"{spec.variance.replace('_', ' ')} variance")
    sidecar = spec.folder / "repaint.json"
    if sidecar.is_file():
        extra = _read_json(sidecar)
        unknown = set(extra) - set(CARD_KEYS)
        if unknown:
            raise DiffusersFolderError(f"{sidecar}: unknown key(s) {sorted(unknown)} (known: {', '.join(CARD_KEYS)})")
        if "framing" in extra and extra["framing"] not in ("whole", "region"):
            raise DiffusersFolderError(f"{sidecar}: framing must be 'whole' or 'region'")
        if "photographic" in extra and extra["photographic"] not in (True, False, None):
            raise DiffusersFolderError(f"{sidecar}: photographic must be true, false or null")
        card.update(extra)
    return card


_PREDICTION_WORDS = {"epsilon": "predicts the noise", "start_x": "predicts the image", "v": "predicts v"}
