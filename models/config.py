"""Typed configurations parsed once from the official RePaint / guided-diffusion YAML keys.

The official confs are flat dicts (plus a few nested sections such as ``schedule_jump_params``
and ``data``). Every builder accepts a whole conf, reads the keys that concern it, and rejects
keys that no official file carries, so a typo is an error instead of a silently ignored value.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

NUM_IMAGENET_CLASSES = 1000


class ConfigError(ValueError):
    """A conf that cannot describe a valid network or process."""


UNET_KEYS = {
    "image_size", "num_channels", "num_res_blocks", "attention_resolutions", "channel_mult",
    "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm",
    "resblock_updown", "use_new_attention_order", "class_cond", "learn_sigma", "dropout",
    "use_fp16", "use_checkpoint",
}
CLASSIFIER_KEYS = {
    "classifier_use_fp16", "classifier_width", "classifier_depth",
    "classifier_attention_resolutions", "classifier_use_scale_shift_norm",
    "classifier_resblock_updown", "classifier_pool",
}
DIFFUSION_KEYS = {
    "diffusion_steps", "noise_schedule", "timestep_respacing", "learn_sigma", "use_kl",
    "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas", "sigma_small",
}
# Keys the official RePaint confs carry for their scripts (data loading, logging, sampling
# options). We accept and ignore them so that an official YAML can be handed over unchanged.
OTHER_OFFICIAL_KEYS = {
    "classifier_scale", "classifier_path", "model_path", "lr_kernel_n_std", "num_samples",
    "show_progress", "clip_denoised", "use_ddim", "latex_name", "method_name", "name",
    "inpa_inj_sched_prev", "inpa_inj_sched_prev_cumnoise", "n_jobs", "print_estimated_vars",
    "schedule_jump_params", "data", "cond_y", "respace_interpolate", "debug", "batch_size",
}
KNOWN_KEYS = UNET_KEYS | CLASSIFIER_KEYS | DIFFUSION_KEYS | OTHER_OFFICIAL_KEYS

# The reference's default channel multipliers when `channel_mult` is ''.
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def check_known_keys(conf: Mapping[str, Any]) -> None:
    """Raise ConfigError naming every key that no official conf carries."""
    unknown = sorted(k for k in conf if k not in KNOWN_KEYS)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError("unknown config key(s): " + ", ".join(hints))


def _get(conf: Mapping[str, Any], key: str, default: Any) -> Any:
    value = conf.get(key, default)
    return default if value is None else value


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None


def _int_list(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(_as_int(key, v) for v in value)
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        return tuple(_as_int(key, p) for p in parts)
    raise ConfigError(f"{key} must be a comma-separated list of integers, got {value!r}")


def _channel_mult(image_size: int, value: Any) -> tuple[float, ...]:
    if value in ("", None, ()):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ConfigError(
                f"channel_mult '' has no default for image_size {image_size} "
                f"(defaults exist for {sorted(DEFAULT_CHANNEL_MULT)}); give channel_mult explicitly")
        return DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(value, str):
        try:
            return tuple(float(p) if "." in p else int(p) for p in value.split(","))
        except ValueError:
            raise ConfigError(f"channel_mult must look like '1,2,2', got {value!r}") from None
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(f"channel_mult must look like '1,2,2', got {value!r}")


def _attention_ds(key: str, image_size: int, value: Any, levels: int) -> tuple[int, ...]:
    """Official confs give attention *resolutions*; the network stores downsampling factors."""
    resolutions = _int_list(key, value)
    reachable = {image_size // 2**level for level in range(levels)}
    for res in resolutions:
        if res not in reachable:
            raise ConfigError(
                f"{key}: resolution {res} never occurs in a {image_size}px network with "
                f"{levels} levels (resolutions: {sorted(reachable, reverse=True)})")
    return tuple(image_size // res for res in resolutions)


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Resolved arguments of the ADM UNet (the reference's `UNetModel`)."""

    image_size: int
    in_channels: int = 3
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    channel_mult: tuple[float, ...]
    dropout: float = 0.0
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    use_fp16: bool = False

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """Resolved arguments of the noisy classifier (the reference's `EncoderUNetModel`)."""

    image_size: int
    in_channels: int = 3
    model_channels: int
    out_channels: int = NUM_IMAGENET_CLASSES
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    channel_mult: tuple[float, ...]
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    pool: str = "attention"
    use_fp16: bool = False


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """Resolved settings of the Gaussian diffusion process."""

    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    learn_sigma: bool = False
    sigma_small: bool = False
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    rescale_learned_sigmas: bool = False
    # Explicit base betas [diffusion_steps] (diffusers schedulers' named and trained schedules);
    # None: `noise_schedule` names them.
    betas: tuple[float, ...] | None = None


def _check_heads(where: str, channels: int, num_heads: int, num_head_channels: int) -> None:
    if num_head_channels != -1:
        if num_head_channels <= 0 or channels % num_head_channels:
            raise ConfigError(
                f"{where}: {channels} channels are not divisible into heads of "
                f"num_head_channels={num_head_channels}")
    elif num_heads <= 0 or channels % num_heads:
        raise ConfigError(f"{where}: {channels} channels cannot be split into num_heads={num_heads}")


def _attention_channels(model_channels: int, mult: tuple[float, ...], ds_list) -> list[int]:
    return [int(m * model_channels) for level, m in enumerate(mult) if 2**level in ds_list]


def unet_config(conf: Mapping[str, Any]) -> UNetConfig:
    """Parse the UNet keys of an official conf (create_model's arguments)."""
    check_known_keys(conf)
    image_size = _as_int("image_size", _get(conf, "image_size", 256))
    model_channels = _as_int("num_channels", _get(conf, "num_channels", 128))
    mult = _channel_mult(image_size, conf.get("channel_mult", ""))
    if image_size % 2 ** (len(mult) - 1):
        raise ConfigError(
            f"image_size {image_size} cannot be halved {len(mult) - 1} times (channel_mult {mult})")
    ds = _attention_ds("attention_resolutions", image_size,
                       _get(conf, "attention_resolutions", "16,8"), len(mult))
    num_heads = _as_int("num_heads", _get(conf, "num_heads", 1))
    num_head_channels = _as_int("num_head_channels", _get(conf, "num_head_channels", -1))
    num_heads_upsample = _as_int("num_heads_upsample", _get(conf, "num_heads_upsample", -1))
    if num_heads_upsample == -1:
        num_heads_upsample = num_heads
    for ch in _attention_channels(model_channels, mult, ds):
        _check_heads("attention", ch, num_heads, num_head_channels)
        _check_heads("upsampling attention", ch, num_heads_upsample, num_head_channels)
    for m in mult:
        if int(m * model_channels) % 32:
            raise ConfigError(f"num_channels {model_channels} x channel_mult {m} = {int(m * model_channels)} "
                              "channels: GroupNorm needs a multiple of 32")
    learn_sigma = _as_bool("learn_sigma", _get(conf, "learn_sigma", False))
    dropout = float(_get(conf, "dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    num_res_blocks = _as_int("num_res_blocks", _get(conf, "num_res_blocks", 2))
    if num_res_blocks < 1 or model_channels < 1:
        raise ConfigError("num_res_blocks and num_channels must be positive")
    return UNetConfig(
        image_size=image_size,
        model_channels=model_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_ds=ds,
        channel_mult=mult,
        dropout=dropout,
        num_classes=NUM_IMAGENET_CLASSES if _as_bool("class_cond", _get(conf, "class_cond", False)) else None,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=_as_bool("use_scale_shift_norm", _get(conf, "use_scale_shift_norm", True)),
        resblock_updown=_as_bool("resblock_updown", _get(conf, "resblock_updown", False)),
        use_new_attention_order=_as_bool(
            "use_new_attention_order", _get(conf, "use_new_attention_order", False)),
        use_fp16=_as_bool("use_fp16", _get(conf, "use_fp16", False)),
    )


def classifier_config(conf: Mapping[str, Any]) -> ClassifierConfig:
    """Parse the ``classifier_*`` keys of an official conf (create_classifier's arguments)."""
    check_known_keys(conf)
    image_size = _as_int("image_size", _get(conf, "image_size", 256))
    if image_size not in DEFAULT_CHANNEL_MULT:
        raise ConfigError(f"no classifier layout for image_size {image_size}")
    mult = DEFAULT_CHANNEL_MULT[image_size]
    width = _as_int("classifier_width", _get(conf, "classifier_width", 128))
    ds = _attention_ds("classifier_attention_resolutions", image_size,
                       _get(conf, "classifier_attention_resolutions", "32,16,8"), len(mult))
    for ch in _attention_channels(width, mult, ds) + [int(mult[-1] * width)]:
        _check_heads("classifier attention", ch, 1, 64)
    pool = str(_get(conf, "classifier_pool", "attention"))
    if pool != "attention":
        raise ConfigError(f"classifier_pool {pool!r} is not supported (official confs use 'attention')")
    return ClassifierConfig(
        image_size=image_size,
        model_channels=width,
        num_res_blocks=_as_int("classifier_depth", _get(conf, "classifier_depth", 2)),
        attention_ds=ds,
        channel_mult=mult,
        use_scale_shift_norm=_as_bool(
            "classifier_use_scale_shift_norm", _get(conf, "classifier_use_scale_shift_norm", True)),
        resblock_updown=_as_bool(
            "classifier_resblock_updown", _get(conf, "classifier_resblock_updown", True)),
        pool=pool,
        use_fp16=_as_bool("classifier_use_fp16", _get(conf, "classifier_use_fp16", False)),
    )


NOISE_SCHEDULES = ("linear", "cosine")


def diffusion_config(conf: Mapping[str, Any]) -> DiffusionConfig:
    """Parse the diffusion keys of an official conf (create_gaussian_diffusion's arguments)."""
    check_known_keys(conf)
    steps = _as_int("diffusion_steps", _get(conf, "diffusion_steps", 1000))
    if steps < 1:
        raise ConfigError(f"diffusion_steps must be positive, got {steps}")
    schedule = str(_get(conf, "noise_schedule", "linear"))
    if schedule not in NOISE_SCHEDULES:
        raise ConfigError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {schedule!r}")
    learn_sigma = _as_bool("learn_sigma", _get(conf, "learn_sigma", False))
    sigma_small = _as_bool("sigma_small", _get(conf, "sigma_small", False))
    if learn_sigma and sigma_small:
        raise ConfigError("learn_sigma and sigma_small contradict each other: choose one")
    use_kl = _as_bool("use_kl", _get(conf, "use_kl", False))
    rescale_learned_sigmas = _as_bool("rescale_learned_sigmas", _get(conf, "rescale_learned_sigmas", False))
    if use_kl and rescale_learned_sigmas:
        raise ConfigError("use_kl and rescale_learned_sigmas select different losses: choose one")
    respacing = _get(conf, "timestep_respacing", "")
    respacing = str(respacing) if not isinstance(respacing, str) else respacing
    # Validate the respacing string now rather than at the first request.
    if respacing:
        space_timesteps(steps, respacing)
    return DiffusionConfig(
        diffusion_steps=steps,
        noise_schedule=schedule,
        timestep_respacing=respacing,
        learn_sigma=learn_sigma,
        sigma_small=sigma_small,
        use_kl=use_kl,
        predict_xstart=_as_bool("predict_xstart", _get(conf, "predict_xstart", False)),
        rescale_timesteps=_as_bool("rescale_timesteps", _get(conf, "rescale_timesteps", False)),
        rescale_learned_sigmas=rescale_learned_sigmas,
    )


@dataclass(frozen=True, kw_only=True)
class JumpParams:
    """The RePaint resampling parameters (`schedule_jump_params` in the official confs)."""

    t_T: int = 250
    jump_length: int = 10
    jump_n_sample: int = 10
    n_sample: int = 1


def jump_params(conf: Mapping[str, Any]) -> JumpParams:
    section = conf.get("schedule_jump_params") or {}
    unknown = set(section) - {"t_T", "n_sample", "jump_length", "jump_n_sample"}
    if unknown:
        raise ConfigError(f"unknown schedule_jump_params key(s): {sorted(unknown)}")
    return JumpParams(
        t_T=_as_int("t_T", section.get("t_T", 250)),
        jump_length=_as_int("jump_length", section.get("jump_length", 10)),
        jump_n_sample=_as_int("jump_n_sample", section.get("jump_n_sample", 10)),
        n_sample=_as_int("n_sample", section.get("n_sample", 1)),
    )


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """Which original timesteps a respaced process keeps, sorted.

    `section_counts` is "250" (one section), "10,15,20" (equal-sized sections with their own
    counts) or "ddimN" (DDIM's fixed stride). Each section keeps evenly spaced steps, rounded
    with Python's round-half-to-even, as the reference does.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(f"cannot create exactly {desired} steps with an integer stride")
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ConfigError(f"timestep_respacing must look like '250' or '10,20', got {section_counts!r}") from None
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ConfigError(f"cannot take {count} steps from a section of {size} diffusion steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))
