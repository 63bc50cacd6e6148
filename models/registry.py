"""What models exist (torch-free): the built-in presets, and the diffusers folders users bring.

A model reference (`REPAINT_MODEL`, an entry of `REPAINT_MODELS`) is a preset name (`faces32`),
a path to a local diffusers model folder (`/models/ddpm-ema-celebahq-256`), or `name=path` to
name such a folder. The API reads this module to validate and describe models without torch;
the worker's `models.presets.load_preset` turns a `Preset` into networks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .config import ConfigError, JumpParams, jump_params
from .diffusers_folder import DiffusersSpec, model_card, read_folder

# The keys the official RePaint confs share (face_example.yml, test_*_256_*.yml).
_ADM_256 = {
    "image_size": 256, "num_channels": 256, "num_res_blocks": 2, "num_heads": 4,
    "num_heads_upsample": -1, "num_head_channels": 64, "attention_resolutions": "32,16,8",
    "channel_mult": "", "dropout": 0.0, "class_cond": False, "use_checkpoint": False,
    "use_scale_shift_norm": True, "resblock_updown": True, "use_fp16": False,
    "use_new_attention_order": False, "learn_sigma": True, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "250", "use_kl": False,
    "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "schedule_jump_params": {"t_T": 250, "n_sample": 1, "jump_length": 10, "jump_n_sample": 10},
}
_IMAGENET_CLASSIFIER = {
    "classifier_use_fp16": False, "classifier_width": 128, "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8", "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True, "classifier_pool": "attention", "classifier_scale": 1.0,
}
# The small random-weight UNet of the reference golden data (tiny_unet_A).
_TINY = {
    "image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2,2",
    "attention_resolutions": "16,8", "num_heads": 1, "num_head_channels": 16,
    "num_heads_upsample": -1, "use_scale_shift_norm": True, "resblock_updown": True,
    "class_cond": False, "learn_sigma": True, "dropout": 0.0, "use_checkpoint": False,
    "use_fp16": False, "use_new_attention_order": False, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "250", "use_kl": False,
    "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "schedule_jump_params": {"t_T": 250, "n_sample": 1, "jump_length": 10, "jump_n_sample": 10},
}

# Our demo model, trained here on procedural faces (training/): fixed variance, 32x32.
FACES32_SHA256 = "472b811a4c799f8c0592f0c55c28ba9fb7fa25c3d1048f21fe19572f45fc0d91"
FACES32_CONF = {
    "image_size": 32, "num_channels": 32, "num_res_blocks": 2, "channel_mult": "1,2,2",
    "attention_resolutions": "16,8", "num_heads": 1, "num_head_channels": 32,
    "num_heads_upsample": -1, "use_scale_shift_norm": True, "resblock_updown": True,
    "class_cond": False, "learn_sigma": False, "dropout": 0.0, "use_checkpoint": False,
    "use_fp16": False, "use_new_attention_order": False, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "250", "use_kl": False,
    "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "schedule_jump_params": {"t_T": 250, "n_sample": 1, "jump_length": 10, "jump_n_sample": 10},
}


WEIGHTS_DIR = Path(__file__).parent / "weights"

# Licence notes, said once.
RESEARCH_ONLY = ("CC BY-NC-SA 4.0, as the RePaint authors release their weights: research and other "
                 "non-commercial use only; the training images have their own terms")


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A model the service can serve: its conf, where its weights come from, what it is for.

    `checkpoint` is the official file name (users bring the file); `bundled` names a file we
    ship in `models/weights/` (pinned by `checkpoint_sha256`); a preset with neither is
    initialised with seeded random weights, for tests. `diffusers` holds the parsed folder of a
    diffusers model (then `conf` carries only its size, steps and default schedule).
    """

    name: str
    description: str
    conf: Mapping[str, Any]
    checkpoint: str | None = None
    bundled: str | None = None
    checkpoint_sha256: str | None = None
    classifier_checkpoint: str | None = None
    random_init_seed: int | None = None
    class_cond: bool = False
    # "whole": trained on whole, centred subjects (aligned faces), so `strategy=auto` gives the
    # model the whole image; "region": scenes and objects, where a crop around the mask works.
    framing: str = "region"
    # What the model knows and where it comes from, shown to users beside the model picker.
    domain: str = ""
    photographic: bool | None = None  # True: photographs; False: drawings; None: not known
    provenance: str = ""
    licence: str = ""
    diffusers: DiffusersSpec | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.conf["image_size"])

    @property
    def defaults(self) -> JumpParams:
        return jump_params(self.conf)

    @property
    def bundled_path(self) -> Path | None:
        return None if self.bundled is None else WEIGHTS_DIR / self.bundled

    @property
    def has_classifier(self) -> bool:
        return self.classifier_checkpoint is not None

    @property
    def source(self) -> str:
        return "diffusers" if self.diffusers is not None else "preset"

    def describe(self, *, classifier: bool) -> dict:
        """What the API needs to know of this model (its GET /models entry, less live counts)."""
        d = self.defaults
        return {
            "name": self.name, "description": self.description, "image_size": self.image_size,
            "class_cond": self.class_cond, "num_classes": 1000 if self.class_cond else None,
            "classifier": classifier, "diffusion_steps": int(self.conf["diffusion_steps"]),
            "framing": self.framing, "domain": self.domain, "photographic": self.photographic,
            "provenance": self.provenance, "licence": self.licence, "source": self.source,
            "defaults": {"steps": d.t_T, "jump_length": d.jump_length, "jump_n_sample": d.jump_n_sample,
                         "n_sample": d.n_sample,
                         "classifier_scale": float(self.conf.get("classifier_scale", 0.0)) if self.class_cond
                         else 0.0},
        }


PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (
    Preset(name="celeba256", description="CelebA-HQ faces, 256x256 (official RePaint checkpoint)",
           conf=_ADM_256, checkpoint="celeba256_250000.pt", framing="whole",
           domain="aligned, centred photographs of faces (CelebA-HQ), 256x256", photographic=True,
           provenance="RePaint authors' CelebA-HQ checkpoint (celeba256_250000.pt), brought by the user",
           licence=RESEARCH_ONLY),
    Preset(name="places256", description="Places2 scenes, 256x256 (official RePaint checkpoint)",
           conf=_ADM_256, checkpoint="places256_300000.pt",
           domain="photographs of scenes, indoor and outdoor (Places2), 256x256", photographic=True,
           provenance="RePaint authors' Places2 checkpoint (places256_300000.pt), brought by the user",
           licence=RESEARCH_ONLY),
    Preset(name="imagenet256",
           description="ImageNet, 256x256, class-conditional with a noisy classifier (official guided-diffusion checkpoints)",
           conf={**_ADM_256, **_IMAGENET_CLASSIFIER, "class_cond": True, "use_fp16": True},
           checkpoint="256x256_diffusion.pt", classifier_checkpoint="256x256_classifier.pt",
           class_cond=True,
           domain="photographs of the 1,000 ImageNet classes (objects and animals), 256x256", photographic=True,
           provenance="OpenAI guided-diffusion checkpoints (256x256_diffusion.pt, 256x256_classifier.pt), "
                      "brought by the user",
           licence="MIT, as openai/guided-diffusion releases them; ImageNet's images have their own terms"),
    Preset(name="faces32",
           description="Procedural cartoon faces, 32x32, trained here on CPU (python -m training.train); "
                       "the demo model that `repaint serve` uses by default",
           conf=FACES32_CONF, bundled="faces32.pt", checkpoint_sha256=FACES32_SHA256, framing="whole",
           domain="flat-coloured cartoon faces drawn by service/faces.py, centred, 32x32: not photographs",
           photographic=False,
           provenance="trained in this repository on procedural faces (training/train.py); shipped in "
                      "models/weights/faces32.pt",
           licence="this project's own weights, trained on generated images only: no third-party data"),
    Preset(name="tiny", description="Tiny random-weight 32x32 UNet (reference tiny_unet_A layout); "
                                    "for tests and first runs, it does not produce meaningful images",
           conf=_TINY, random_init_seed=0,
           domain="none: random weights, for tests; it paints noise", photographic=None,
           provenance="seeded random initialisation (no file)", licence="none needed: no trained weights"),
)})


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


# Model names become Redis keys, queue names and form values: keep them plain.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelRef:
    """One entry of REPAINT_MODEL / REPAINT_MODELS: a name, and the folder for diffusers models."""

    name: str
    folder: Path | None = None


def looks_like_path(text: str) -> bool:
    return "/" in text or text.startswith((".", "~")) or "\\" in text


def name_for_folder(folder: Path) -> str:
    """A model name from a folder's name: lower case, runs of other characters as '-'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.name.lower()).strip("-._")[:64]
    if not name or not _NAME.match(name):
        raise ConfigError(f"cannot make a model name of the folder name {folder.name!r}: "
                          f"write name=path, e.g. mymodel={folder}")
    return name


def parse_model_ref(text: str) -> ModelRef:
    """`faces32`, `/models/ddpm-ema-church-256` or `church=/models/ddpm-ema-church-256`."""
    text = text.strip()
    name, sep, path = text.partition("=")
    if sep:
        name = name.strip()
        if not _NAME.match(name):
            raise ConfigError(f"model name {name!r} must be 1-64 characters of a-z, 0-9, '.', '_' and '-'")
        return ModelRef(name, Path(path.strip()).expanduser())
    if looks_like_path(text):
        folder = Path(text).expanduser()
        return ModelRef(name_for_folder(folder), folder)
    if text not in PRESETS:
        raise ConfigError(f"unknown model {text!r}: give a preset ({', '.join(sorted(PRESETS))}) or the "
                          f"path of a diffusers model folder (with a '/', e.g. ./my-model or /models/my-model)")
    return ModelRef(text)


def parse_model_refs(default: str, extra: str) -> list[ModelRef]:
    """The default model plus a comma-separated list, each name once (the first wins)."""
    refs: dict[str, ModelRef] = {}
    for text in [default, *extra.split(",")]:
        if text.strip():
            ref = parse_model_ref(text)
            refs.setdefault(ref.name, ref)
    return list(refs.values())


def resolve_model(ref: str | ModelRef) -> Preset:
    """The Preset a model reference stands for: a built-in one, or one read from a diffusers folder."""
    if isinstance(ref, str):
        ref = parse_model_ref(ref)
    if ref.folder is None:
        return get_preset(ref.name)
    return preset_from_folder(ref.folder, name=ref.name)


def preset_from_folder(folder: str | Path, *, name: str) -> Preset:
    """A Preset for a diffusers folder: the paper's RePaint schedule on its own process."""
    spec = read_folder(folder)
    card = model_card(spec, name)
    conf = {"image_size": spec.image_size, "diffusion_steps": spec.num_train_timesteps,
            "timestep_respacing": "", "learn_sigma": spec.variance == "learned_range",
            "schedule_jump_params": {"t_T": min(250, spec.num_train_timesteps), "n_sample": 1,
                                     "jump_length": 10, "jump_n_sample": 10}}
    return Preset(name=name, description=card["description"], conf=conf, framing=card["framing"],
                  domain=card["domain"], photographic=card["photographic"], provenance=card["provenance"],
                  licence=card["licence"], diffusers=spec)
