"""What each sampler takes: typed settings, their rules, time schedules and evaluation counts.

Torch-free on purpose: the API validates a request with these classes and counts its network
evaluations before it queues the job; the worker rebuilds the same settings from the job record
and runs them with the sampler of the same name in `models.samplers` (the update math).

Adding a sampler: a settings class (its fields carry their rules in `metadata`: see `_param`;
`schedule` says how it walks the diffusion; `implementation` names its math, a
`models.samplers.Sampler`) and one `register(...)` line. Nothing in `service/` changes: the API's
form fields, GET /models, the page's controls, the CLI's flags and docs/api.md's parameter table
are made from the registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar, Mapping

from .schedule import (RESAMPLE_EVERYWHERE, ScheduleTooLong, count_evaluations_upto, count_model_evaluations,
                       jump_schedule)


class SettingsError(ValueError):
    """Settings no sampler run can honour (a 422 at the API)."""


def _param(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None,
           advanced: bool = False):
    """A sampler parameter: its default, meaning and range, which the API's form, GET /models, the
    CLI's flags and the page's controls are made from. `advanced` ones sit under "more" on the page."""
    return field(default=default, metadata={"doc": doc, "minimum": minimum, "maximum": maximum,
                                            "advanced": advanced})


# The jump schedule's arguments (models.schedule.jump_schedule) with the values that turn each
# off: a sampler's `schedule` maps every argument to one of its parameters or to a constant.
NEUTRAL_SCHEDULE: Mapping[str, int] = {
    "n_sample": 1, "jump_length": 1, "jump_n_sample": 1, "jump2_length": 1, "jump2_n_sample": 1,
    "jump3_length": 1, "jump3_n_sample": 1, "start_resampling": RESAMPLE_EVERYWHERE}


def schedule_from(**parameters: str | int) -> Mapping[str, str | int]:
    """A sampler's `schedule`: the named jump-schedule arguments fed by its parameters (or fixed),
    every other one neutral."""
    unknown = set(parameters) - set(NEUTRAL_SCHEDULE)
    if unknown:
        raise TypeError(f"not jump-schedule arguments: {sorted(unknown)}")
    return {**NEUTRAL_SCHEDULE, **parameters}


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """Common to every sampler: the name, the respaced step count and the rule checks."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # "module:Class" of the update math (a models.samplers.Sampler), imported by the worker only:
    # these settings stay torch-free for the API.
    implementation: ClassVar[str]
    # How the sampler walks the diffusion: each jump-schedule argument, from a parameter or fixed.
    schedule: ClassVar[Mapping[str, str | int]] = NEUTRAL_SCHEDULE
    # Whether a model's own schedule defaults (its conf's t_T, jump_length, ...) replace this
    # sampler's defaults for the parameters both name.
    takes_model_defaults: ClassVar[bool] = False
    steps: int = _param(250, "respaced sampling steps (t_T): the diffusion is walked on this many indices",
                        minimum=2)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = float if isinstance(f.default, float) else int
            if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise SettingsError(f"{f.name} must be an integer, got {value!r}")
            if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise SettingsError(f"{f.name} must be a number, got {value!r}")
            low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
            if low is not None and value < low:
                raise SettingsError(f"{f.name} must be at least {low} for sampler {self.name}, got {value}")
            if high is not None and value > high:
                raise SettingsError(f"{f.name} must be at most {high} for sampler {self.name}, got {value}")

    # ---- the schedule --------------------------------------------------------------------------

    def times(self, max_length: int | None = None) -> list[int]:
        """The respaced indices the sample visits, ending with -1 (see models.schedule)."""
        return jump_schedule(self.steps, max_length=max_length, **self.schedule_arguments())

    @cached_property
    def evaluations(self) -> int:
        """Network evaluations per sample."""
        return count_model_evaluations(self.times())

    def evaluations_within(self, limit: int) -> int:
        """Network evaluations per sample, refusing (SettingsError) past `limit` without building
        a longer schedule: a schedule has at most one re-noising move per evaluation. The refusal
        says what the settings ask for, counted up to ten times the limit (past that, "more than")."""
        try:
            count = count_model_evaluations(self.times(max_length=2 * limit + 2))
        except ScheduleTooLong:
            count = None
        if count is None or count > limit:
            cap = 10 * limit
            count = count if count is not None else count_evaluations_upto(
                {"t_T": self.steps, **self.schedule_arguments()}, cap)
            asked = f"{count:,}" if count is not None else f"more than {cap:,}"
            raise SettingsError(f"these settings need {asked} network evaluations per sample; the limit is "
                                f"{limit:,} (REPAINT_MAX_EVALUATIONS)")
        return count

    def schedule_arguments(self) -> dict[str, int]:
        """The jump schedule's arguments these settings give (see `schedule`)."""
        return {arg: getattr(self, source) if isinstance(source, str) else source
                for arg, source in self.schedule.items()}

    # ---- records -------------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """`{"sampler": name, field: value, ...}`: what a job record stores and shows."""
        return {"sampler": self.name, **asdict(self)}

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def describe(cls, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The sampler for GET /models: its parameters with types, defaults and ranges."""
        defaults = dict(defaults or {})
        params = []
        for f in fields(cls):
            params.append({"name": f.name, "type": "number" if isinstance(f.default, float) else "integer",
                           "default": defaults.get(f.name, f.default), "minimum": f.metadata.get("minimum"),
                           "maximum": f.metadata.get("maximum"), "description": f.metadata["doc"],
                           "advanced": f.metadata.get("advanced", False)})
        return {"name": cls.name, "description": cls.summary, "parameters": params, "schedule": dict(cls.schedule),
                "takes_model_defaults": cls.takes_model_defaults}


@dataclass(frozen=True, kw_only=True)
class RePaintSettings(SamplerSettings):
    """RePaint (Lugmayr et al., CVPR 2022) with the reference's full jump-schedule parameters."""

    name: ClassVar[str] = "repaint"
    implementation: ClassVar[str] = "models.samplers.repaint:RePaint"
    schedule: ClassVar[Mapping[str, str | int]] = schedule_from(**{arg: arg for arg in NEUTRAL_SCHEDULE})
    takes_model_defaults: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "RePaint (Lugmayr et al., CVPR 2022): each step merges the known pixels, noised to the step's "
        "level, with the model's sample; resampling jumps re-noise a stretch and redo it so that the "
        "fill agrees with its surroundings. The paper's setting is 250 steps, jumps of 10, 10 times.")
    jump_length: int = _param(10, "resampling stretch length: every this many steps, go back up and redo them",
                              minimum=1)
    jump_n_sample: int = _param(10, "times each stretch is sampled (1: no resampling)", minimum=1)
    n_sample: int = _param(1, "times each single step is sampled (re-noise one index and redo it)", minimum=1,
                              advanced=True)
    jump2_length: int = _param(1, "second-level stretch length, nested inside the first", minimum=1, advanced=True)
    jump2_n_sample: int = _param(1, "times each second-level stretch is sampled", minimum=1, advanced=True)
    jump3_length: int = _param(1, "third-level stretch length, nested inside the second", minimum=1, advanced=True)
    jump3_n_sample: int = _param(1, "times each third-level stretch is sampled", minimum=1, advanced=True)
    start_resampling: int = _param(RESAMPLE_EVERYWHERE, "resample only at or below this step index "
                                   "(lower: resample only the late, detailed steps; faster)", minimum=0,
                                   advanced=True)


@dataclass(frozen=True, kw_only=True)
class DDNMSettings(SamplerSettings):
    """DDNM (Wang et al., ICLR 2023): null-space projection of the clean estimate, then a DDIM step."""

    name: ClassVar[str] = "ddnm"
    implementation: ClassVar[str] = "models.samplers.ddnm:DDNM"
    schedule: ClassVar[Mapping[str, str | int]] = schedule_from(jump_length="travel_length",
                                                                jump_n_sample="travel_repeat")
    summary: ClassVar[str] = (
        "DDNM (Wang, Yu and Zhang, ICLR 2023): each step takes the model's clean estimate, puts the known "
        "pixels back into it (the null-space projection for a mask) and takes a DDIM step to the next "
        "level; optional time travel re-noises the estimate and redoes a stretch. About 100 evaluations.")
    steps: int = _param(100, "respaced sampling steps: one network evaluation each (before time travel)",
                        minimum=2)
    eta: float = _param(0.85, "share of fresh noise in each step (0: deterministic DDIM, 1: all fresh noise)",
                        minimum=0.0, maximum=1.0)
    travel_length: int = _param(1, "time-travel stretch length: every this many steps, re-noise the estimate "
                                "back up this many steps (1 with travel_repeat 1: no time travel)", minimum=1)
    travel_repeat: int = _param(1, "times each time-travel stretch is sampled", minimum=1)


# The samplers, by name: the one registry every reader (API form, GET /models, page, CLI, worker,
# docs table) goes through.
SETTINGS: dict[str, type[SamplerSettings]] = {}


def register(cls: type[SamplerSettings]) -> type[SamplerSettings]:
    """Add a sampler (its settings class; the class names its math in `implementation`)."""
    if cls.name in SETTINGS and SETTINGS[cls.name] is not cls:
        raise ValueError(f"a sampler named {cls.name!r} is registered already")
    unknown = {source for source in cls.schedule.values() if isinstance(source, str)} - set(cls.parameter_names())
    if unknown:
        raise ValueError(f"{cls.__name__}.schedule names parameters it does not have: {sorted(unknown)}")
    SETTINGS[cls.name] = cls
    return cls


register(RePaintSettings)
register(DDNMSettings)
DEFAULT_SAMPLER = RePaintSettings.name


def settings_class(name: str) -> type[SamplerSettings]:
    try:
        return SETTINGS[name]
    except KeyError:
        raise SettingsError(f"unknown sampler {name!r}; known: {sorted(SETTINGS)}") from None


def settings_from_record(record: Mapping[str, Any]) -> SamplerSettings:
    """The settings a job record (or a preset) holds; records without `sampler` are RePaint's
    (jobs queued before samplers were pluggable)."""
    cls = settings_class(record.get("sampler", DEFAULT_SAMPLER))
    return cls(**{k: record[k] for k in cls.parameter_names() if k in record})


def all_parameter_names() -> frozenset[str]:
    """Every parameter of every sampler (the API's form accepts these)."""
    return frozenset(name for cls in SETTINGS.values() for name in cls.parameter_names())


def owners_of(parameter: str) -> list[str]:
    """The samplers that take `parameter`."""
    return sorted(name for name, cls in SETTINGS.items() if parameter in cls.parameter_names())


def _number(value: int | float) -> str:
    return "everywhere" if value == RESAMPLE_EVERYWHERE else f"{value:,}" if isinstance(value, int) else f"{value:g}"


def parameters_markdown() -> str:
    """The sampler parameters as docs/api.md shows them (a test keeps the two the same): one row
    per parameter and sampler, with its default, range and meaning."""
    rows = ["| sampler | parameter | default | range | meaning |", "|---|---|---|---|---|"]
    for cls in SETTINGS.values():
        for f in fields(cls):
            low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
            bounds = (f"{_number(low)} to {_number(high)}" if low is not None and high is not None else
                      f"at least {_number(low)}" if low is not None else
                      f"at most {_number(high)}" if high is not None else "")
            default = f"the model's, else {_number(f.default)}" if cls.takes_model_defaults else _number(f.default)
            rows.append(f"| `{cls.name}` | `{f.name}` | {default} | {bounds} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m models.sampler_settings --markdown: docs/api.md's table
    import sys

    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m models.sampler_settings --markdown")
    sys.stdout.write(parameters_markdown())
