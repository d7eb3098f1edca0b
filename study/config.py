"""One typed configuration for a sigmatune study, loaded from TOML and checked where it enters.

A config is a TOML file (or a built-in preset: ``toy``, ``digits``, ``mnist``, ``cifar10``,
stored in ``study/presets/``) with top-level keys and four tables::

    name = "toy"                  # outer study NAME; inner studies NAME/trial-NNNN/nfe-K
    dataset = "gmm2d"             # models.data spec: gmm2d, moons, digits, mnist5k, cifar10,
                                  # folder:PATH; stats:PATH (FID statistics, tune-sampling)
    data_root = ""                # where cifar10 / folder data live (optional)
    seed = 0
    sigma_min = 0.002             # the run's noise range: training densities are truncated to
    sigma_max = 80.0              # it, schedules start and end at its ends
    storage = "sqlite:///sigmatune.db"
    artifact_dir = ""             # default: "<db stem>-artifacts" beside a SQLite file
    artifact_store = ""           # "": artifact_dir is shared; s3://BUCKET/PREFIX, file:///PATH
    device = "auto"               # auto | cpu | cuda | cuda:N

    [network]  name, params       # models.networks.make_network(name, params, shape)
    [train]    train_nimg, batch_size, lr, ema_halflife_nimg, checkpoint_nimg, grad_clip
    [outer]    outer_trials, sampler, pruner, interim, interim_sigma_range,
               prune_within_spread, space, weighting_shape, split, parameterisations,
               densities, weightings, adaptive, piecewise_bins, enqueue_baseline, literature,
               objectives
    [inner]    inner_trials, nfe_budgets, samplers, sampler, space, objective, tune_sigma_range,
               tune_churn, fid_num_images, search_images, held_out_sets, fid_extractor,
               fid_inception_weights, kid, batch_size, prune, peers

Every key has a default (the dataclass fields below), so a file need only state what differs.
Unknown keys, at any level, are errors; so are wrong types and out-of-range values. All the
errors of a config are collected and raised together as one :class:`ConfigError`, one line
each, every line naming the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigmatune.models.data import DATASETS
from sigmatune.models.networks import NETWORKS
from sigmatune.models.placement import PLACEMENT_METHODS, PLACEMENTS, TEACHER_STEPS
from sigmatune.models.samplers import SAMPLERS, steps_for_nfe
from sigmatune.models.samplers import nfe as nfe_of
from sigmatune.objectives.adaptive import ADAPTIVE
from sigmatune.objectives.densities import DENSITIES
from sigmatune.objectives.literature import LITERATURE, literature_names
from sigmatune.objectives.parameterisations import PARAMETERISATIONS
from sigmatune.objectives.weightings import WEIGHTINGS
from sigmatune.study.errors import ConfigError
from sigmatune.study.names import preset_names, presets_dir
from sigmatune.study.urls import (
    DEFAULT_STORAGE_URL,
    StorageError,
    parse_artifact_store_url,
    parse_storage_url,
)

__all__ = [
    "Config",
    "ConfigError",
    "InnerConfig",
    "NetworkConfig",
    "OuterConfig",
    "TrainConfig",
    "load_config",
    "preset_names",
]

POINT_DATASETS = ("gmm2d", "gmm32", "moons")  # points: an MLP, no Inception features
FID_EXTRACTORS = ("rff", "raw", "classifier", "classifier-whitened", "inception")
OUTER_SAMPLERS = ("tpe", "cmaes", "random")
OUTER_PRUNERS = ("hyperband", "successive_halving", "median", "none")
# the outer pruner's interim score (study.outer.INTERIM_SCHEDULES): the schedule it samples with
OUTER_INTERIMS = ("karras", "gits")
INNER_SAMPLERS = ("gp", "tpe", "cmaes", "random")
# what an outer trial searches (study.spaces): the parameterisation, p and w apart
# ("components"), or the effective weighting W(lambda) of objectives.wfamily, the split of it
# between p and w, and the parameterisation ("weighting")
OUTER_SPACES = ("components", "weighting")
WEIGHTING_SHAPES = ("bump", "piecewise")  # objectives.wfamily.SHAPES
WEIGHTING_SPLITS = ("shape", "power")  # objectives.wlam.SPLITS
# the density and weighting that only the "weighting" space makes (never in outer.densities)
WEIGHTING_SPACE_ONLY = ("wlam",)
# what an inner trial searches (study.spaces): the gaps in lam between the steps, or a
# two-parameter step density shared by every NFE budget (karras of any rho and loglinear in it)
INNER_SPACES = ("gaps", "density")
# what an inner trial is ranked by (study.scoring): FID on the search seeds, or the paired
# bound (the few-step samples against a many-step reference run from the same noise)
INNER_OBJECTIVES = ("fid", "paired")
MIN_STEPS = 2  # an inner study needs at least one free step location (one gap in lam)
MAX_PIECEWISE_BINS = 64
MIN_HELD_OUT_SETS = 3  # a held-out figure is a mean with a spread over at least 3 seed sets
MAX_NAME_LENGTH = 256  # study names; file names made from them are shortened further


# ----------------------------------------------------------------------------- value checks


def _registry(kind: str) -> list[str]:
    """The valid names of one registry of ``objectives`` / ``models``."""
    if kind == "adaptive":
        return ["none", *ADAPTIVE]
    if kind == "datasets":
        return [name for name in DATASETS if name != "folder"]  # folder:PATH
    if kind in ("densities", "weightings"):  # wlam: the weighting space's own, not a choice
        reg = DENSITIES if kind == "densities" else WEIGHTINGS
        return [name for name in reg if name not in WEIGHTING_SPACE_ONLY]
    registries = {
        "parameterisations": PARAMETERISATIONS,
        "samplers": SAMPLERS,
        "networks": NETWORKS,
    }
    return list(registries[kind])


class _Invalid(Exception):
    """Raised by a check with what is allowed: "must be a positive integer"."""


def _int(value: Any, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        if low == 1:
            raise _Invalid("must be a positive integer")
        if low == 0:
            raise _Invalid("must be an integer >= 0")
        raise _Invalid(f"must be an integer >= {low}" if low is not None else "must be an integer")
    return int(value)


def _positive_int(value: Any) -> int:
    return _int(value, 1)


def _float(value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if positive:
        ok = ok and value > 0
        what = "must be a number > 0"
    elif nonnegative:
        ok = ok and value >= 0
        what = "must be a number >= 0"
    else:
        what = "must be a finite number"
    if not ok:
        raise _Invalid(what)
    return float(value)


def _positive_float(value: Any) -> float:
    return _float(value, positive=True)


def _nonnegative_float(value: Any) -> float:
    return _float(value, nonnegative=True)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a string")
    return value


def _choice(options: Sequence[str] | Callable[[], Sequence[str]]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        valid = list(options() if callable(options) else options)
        if not isinstance(value, str) or value not in valid:
            raise _Invalid(f"must be one of {', '.join(valid)}")
        return value

    return check


def _names(kind: str) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        valid = _registry(kind)
        what = f"must be a non-empty list of distinct names from: {', '.join(valid)}"
        if not isinstance(value, (list, tuple)) or not value:
            raise _Invalid(what)
        if any(not isinstance(v, str) or v not in valid for v in value):
            raise _Invalid(what)
        if len(set(value)) != len(value):
            raise _Invalid(what)
        return tuple(value)

    return check


def _int_list(value: Any) -> tuple[int, ...]:
    what = "must be a non-empty list of distinct positive integers"
    if not isinstance(value, (list, tuple)) or not value:
        raise _Invalid(what)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise _Invalid(what)
    if len(set(value)) != len(value):
        raise _Invalid(what)
    return tuple(int(v) for v in value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value or value != value.strip():
        raise _Invalid(
            "must be a non-empty study name without '/' or surrounding spaces (inner studies "
            "are named NAME/trial-NNNN/nfe-K)"
        )
    if len(value) > MAX_NAME_LENGTH:
        raise _Invalid(
            f"must be at most {MAX_NAME_LENGTH} characters long (this one has {len(value)}; "
            "inner study names NAME/trial-NNNN/nfe-K must fit Optuna's study names)"
        )
    return value


def _dataset(value: Any) -> str:
    names = _registry("datasets")
    if isinstance(value, str) and (
        value in names
        or any(value.startswith(p) and len(value) > len(p) for p in ("folder:", "stats:"))
    ):
        return value
    raise _Invalid(
        f"must be one of {', '.join(names)}, folder:PATH (a folder of images) or stats:PATH "
        "(precomputed FID statistics, an .npz of mu and sigma; tune-sampling only)"
    )


def _device(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda|cuda:\d+", value):
        return value
    raise _Invalid("must be auto, cpu, cuda or cuda:N")


def _storage(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a non-empty storage URL")

    try:
        parse_storage_url(value)
    except StorageError as exc:
        raise _Invalid(f"must be a valid storage URL ({exc})") from None
    return value


def _artifact_store(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid('must be a string: "", s3://BUCKET/PREFIX or file:///PATH')

    try:
        parse_artifact_store_url(value)
    except StorageError as exc:
        raise _Invalid(f"must be a valid artifact store URL ({exc})") from None
    return value.strip()


def _literature_names() -> list[str]:

    return literature_names()


def _literature(value: Any) -> tuple[str, ...]:
    valid = [n for n in _literature_names() if n != "edm"]
    what = (
        "must be a list of distinct names from: "
        f"{', '.join(valid)} (EDM's defaults come first through outer.enqueue_baseline)"
    )
    if not isinstance(value, (list, tuple)) or any(v not in valid for v in value):
        raise _Invalid(what)
    if len(set(value)) != len(value):
        raise _Invalid(what)
    return tuple(value)


def _peers(value: Any) -> tuple[str, ...]:
    """Step-placement methods of ``models.placement.PLACEMENTS`` (empty: none)."""

    what = f"must be a list of distinct names from: {', '.join(PLACEMENTS)} (or [] for none)"
    if not isinstance(value, (list, tuple)) or any(v not in PLACEMENTS for v in value):
        raise _Invalid(what)
    if len(set(value)) != len(value):
        raise _Invalid(what)
    return tuple(value)


def _sigma_pair(value: Any) -> tuple[float, ...]:
    what = "must be [] or two noise levels [low, high] with 0 < low < high"
    if not isinstance(value, (list, tuple)) or len(value) not in (0, 2):
        raise _Invalid(what)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise _Invalid(what)
    if value and not 0 < value[0] < value[1] < math.inf:
        raise _Invalid(what)
    return tuple(float(v) for v in value)


def _nfe_list(value: Any) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)) and not value:
        return ()
    return _int_list(value)


def _params(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or any(not isinstance(k, str) for k in value):
        raise _Invalid("must be a table of constructor arguments")
    return _jsonable(dict(value))


def _literature_checks(outer: dict[str, Any], errors: list[str]) -> None:
    """Every enqueued literature configuration must lie in the configured outer space."""
    names = outer.get("literature")
    if not names:
        return

    weighting_space = outer.get("space") == "weighting"  # mapped points: p and w are wlam's
    for name in names:
        entry = LITERATURE[name]
        terms = (
            ("parameterisations", entry.parameterisation),
            ("densities", None if weighting_space else entry.density.name),
            ("weightings", None if weighting_space else entry.weighting.name),
            ("adaptive", entry.adaptive.name if entry.adaptive else "none"),
        )
        for key, needed in terms:
            allowed = outer.get(key)
            if needed is not None and allowed is not None and needed not in allowed:
                errors.append(
                    f"outer.{key} must include {needed!r} for the literature configuration "
                    f"{name!r} in outer.literature (or leave {name!r} out), but got {list(allowed)}"
                )


def _bounded_int(value: Any, low: int, high: int | None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        raise _Invalid(
            f"must be an integer in [{low}, {high}]"
            if high is not None
            else f"must be an integer >= {low}"
        )
    return int(value)


def _field(default: Any, check: Callable[[Any], Any]) -> Any:
    """A config field with its check next to it (``check(value)`` returns the checked value
    or raises ``_Invalid`` with what is allowed)."""
    if callable(default):
        return field(default_factory=default, metadata={"check": check})
    return field(default=default, metadata={"check": check})


# ----------------------------------------------------------------------------- the dataclasses


@dataclass(frozen=True)
class NetworkConfig:
    """``models.networks.make_network(name, params, shape)``; the shape comes from the data."""

    name: str = _field("mlp", _choice(lambda: _registry("networks")))
    params: dict[str, Any] = _field(dict, _params)


@dataclass(frozen=True)
class TrainConfig:
    """``models.training.train`` budget and optimiser (images, not steps)."""

    train_nimg: int = _field(256_000, _positive_int)
    batch_size: int = _field(512, _positive_int)
    lr: float = _field(1e-3, _positive_float)
    ema_halflife_nimg: int = _field(25_000, _positive_int)
    checkpoint_nimg: int = _field(64_000, _positive_int)
    grad_clip: float = _field(0.0, _nonnegative_float)  # global gradient norm; 0 = off


@dataclass(frozen=True)
class OuterConfig:
    """The outer study: the training weighting (``study.spaces.suggest_objective``)."""

    outer_trials: int = _field(3, _positive_int)
    sampler: str = _field("tpe", _choice(OUTER_SAMPLERS))
    # multi-fidelity over training images: rungs at checkpoints (Optuna's pruners)
    pruner: str = _field("hyperband", _choice(OUTER_PRUNERS))
    # the interim score the pruner reads at each checkpoint (study.outer.interim_score): FID at
    # the primary NFE over the held-out seed sets, with karras rho=7 on interim_sigma_range
    # ("karras") or a GITS fit on the best tuned range so far ("gits")
    interim: str = _field("karras", _choice(OUTER_INTERIMS))
    # [sigma_min, sigma_max] of the karras interim; []: study.outer.interim_sigma_range's rule
    interim_sigma_range: tuple[float, ...] = _field((), _sigma_pair)
    # false: a trial whose interim is within its seed-to-seed spread of the cut is kept
    prune_within_spread: bool = _field(False, _bool)
    # "components": parameterisations x densities x weightings; "weighting": W(lambda) itself
    space: str = _field("components", _choice(OUTER_SPACES))
    # the family of W(lambda) in the "weighting" space: five numbers, or piecewise_bins knots
    weighting_shape: str = _field("bump", _choice(WEIGHTING_SHAPES))
    # how the "weighting" space splits W between p and w: p a shape of the same family with
    # w = W/p ("shape"), or p proportional to W^split with split in [0, 1] ("power")
    split: str = _field("shape", _choice(WEIGHTING_SPLITS))
    parameterisations: tuple[str, ...] = _field(
        lambda: tuple(_registry("parameterisations")), _names("parameterisations")
    )
    densities: tuple[str, ...] = _field(lambda: tuple(_registry("densities")), _names("densities"))
    weightings: tuple[str, ...] = _field(
        lambda: tuple(_registry("weightings")), _names("weightings")
    )
    adaptive: tuple[str, ...] = _field(lambda: tuple(_registry("adaptive")), _names("adaptive"))
    piecewise_bins: int = _field(6, lambda v: _bounded_int(v, 2, MAX_PIECEWISE_BINS))
    enqueue_baseline: bool = _field(True, _bool)  # EDM's defaults as trial 0
    # the literature's configurations enqueued after EDM (objectives.literature), in order
    literature: tuple[str, ...] = _field(
        lambda: tuple(n for n in _literature_names() if n != "edm"), _literature
    )
    # NFE budgets (of inner.nfe_budgets) that are objectives of the outer study; empty: the
    # primary budget alone. Two or more make a multi-objective study (not pruned).
    objectives: tuple[int, ...] = _field((), _nfe_list)


@dataclass(frozen=True)
class InnerConfig:
    """The inner studies: the sampling step locations (``study.spaces.suggest_schedule``)."""

    inner_trials: int = _field(12, _positive_int)
    nfe_budgets: tuple[int, ...] = _field((5, 9), _int_list)  # the first is the primary budget
    samplers: tuple[str, ...] = _field(("heun",), _names("samplers"))
    sampler: str = _field("gp", _choice(INNER_SAMPLERS))
    space: str = _field("density", _choice(INNER_SPACES))
    objective: str = _field("fid", _choice(INNER_OBJECTIVES))
    tune_sigma_range: bool = _field(False, _bool)
    tune_churn: bool = _field(False, _bool)
    fid_num_images: int = _field(1000, lambda v: _bounded_int(v, 2, None))
    # images per search trial (the search seeds, the first of fid_num_images's); 0: all of
    # them. The search only ranks; every reported figure stays on fid_num_images per set.
    search_images: int = _field(0, lambda v: _bounded_int(v, 0, None))
    # held-out seed sets every reported figure is re-scored on (mean and spread)
    held_out_sets: int = _field(3, lambda v: _bounded_int(v, MIN_HELD_OUT_SETS, None))
    fid_extractor: str = _field("rff", _choice(FID_EXTRACTORS))
    fid_inception_weights: str = _field("", _str)
    kid: bool = _field(False, _bool)
    batch_size: int = _field(1000, _positive_int)  # images per generation batch
    prune: bool = _field(True, _bool)
    # published step-placement methods (models.placement) computed for the model in every
    # inner study: scored as baselines on held-out seeds and enqueued as starting points
    peers: tuple[str, ...] = _field(tuple(PLACEMENTS), _peers)  # every registered method


@dataclass(frozen=True)
class Config:
    """The whole configuration of a study; build it with :func:`load_config`."""

    name: str = _field("sigmatune", _name)
    dataset: str = _field("gmm2d", _dataset)
    data_root: str = _field("", _str)
    seed: int = _field(0, lambda v: _int(v, 0))
    sigma_min: float = _field(0.002, _positive_float)
    sigma_max: float = _field(80.0, _positive_float)
    storage: str = _field(DEFAULT_STORAGE_URL, _storage)
    artifact_dir: str = _field("", _str)
    # "": artifact_dir is the store (a folder every worker mounts); "s3://BUCKET/PREFIX"
    # (Optuna's Boto3ArtifactStore) or "file:///PATH": a bucket, artifact_dir its local cache
    artifact_store: str = _field("", _artifact_store)
    device: str = _field("auto", _device)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)

    def to_dict(self) -> dict[str, Any]:
        """The complete config as JSON-able nested dicts (lists, not tuples)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "dict") -> Config:
        """Rebuild (and check) a config from :meth:`to_dict`'s output or a parsed TOML file."""
        return _build(d, None, source)

    def replace(self, overrides: Mapping[str, Any] | None = None, **dotted: Any) -> Config:
        """A checked copy with dotted keys replaced: ``config.replace(**{"outer.outer_trials":
        3}, storage="sqlite:///x.db")``."""
        return _build(self.to_dict(), {**(overrides or {}), **dotted}, "overrides")


SECTIONS: dict[str, type] = {
    "": Config,
    "network": NetworkConfig,
    "train": TrainConfig,
    "outer": OuterConfig,
    "inner": InnerConfig,
}


def _checks(section: str) -> dict[str, Callable[[Any], Any]]:
    """The checked keys of one table, from the fields' metadata (sub-tables excluded)."""
    return {
        f.name: f.metadata["check"]
        for f in dataclasses.fields(SECTIONS[section])
        if "check" in f.metadata
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _default(cls: type, name: str) -> Any:
    f = cls.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


# ----------------------------------------------------------------------------- building


def _describe_value(value: Any) -> str:
    return repr(_jsonable(value)) if isinstance(value, (list, tuple, Mapping)) else repr(value)


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], errors: list[str]) -> None:
    """Set dotted keys (``"outer.outer_trials"``, ``"network.params.channels"``) in ``raw``."""
    for key, value in overrides.items():
        parts = str(key).split(".")
        if not all(parts):
            errors.append(f"override key {key!r} is not a dotted key like 'outer.outer_trials'")
            continue
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                errors.append(f"cannot override {key!r}: {where!r} is not a table")
                break
            node = child
        else:
            node[parts[-1]] = _jsonable(value) if isinstance(value, tuple) else value


def _section_keys(name: str) -> list[str]:
    if name:
        return list(_checks(name))
    return [*_checks(""), *(k for k in SECTIONS if k)]


def _check_section(raw: Mapping[str, Any], section: str, errors: list[str]) -> dict[str, Any]:
    """Checked values of one table (defaults for missing keys; errors collected)."""
    prefix = f"{section}." if section else ""
    cls = SECTIONS[section]
    valid = _section_keys(section)
    for key in raw:
        if key not in valid:
            where = f"in [{section}]" if section else "at the top level"
            errors.append(
                f"unknown key {prefix + str(key)!r}; valid keys {where}: {', '.join(valid)}"
            )
    out: dict[str, Any] = {}
    for key, check in _checks(section).items():
        if key not in raw:
            out[key] = _default(cls, key)
            continue
        value = raw[key]
        try:
            out[key] = check(value)
        except _Invalid as exc:
            errors.append(f"{prefix}{key} {exc}, but got {_describe_value(value)}")
    return out


def _check_network_params(net: dict[str, Any], errors: list[str]) -> None:
    """Unknown constructor arguments of the network are errors too (``network.params.X``)."""
    try:
        from sigmatune.models.networks import NETWORKS
    except ImportError:  # pragma: no cover - models is part of the package
        return
    cls = NETWORKS.get(net["name"])
    if cls is None:
        return
    signature = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    derived = {"dim"} if net["name"] == "mlp" else {"in_channels", "image_size"}
    valid = [p for p in signature.parameters if p != "self" and p not in derived]
    for key, value in net["params"].items():
        if key in derived:
            errors.append(
                f"network.params.{key} is set from the data set's shape, so it must "
                f"not be given, but got {_describe_value(value)}"
            )
        elif key not in valid:
            errors.append(
                f"unknown key 'network.params.{key}'; valid keys for network "
                f"{net['name']!r}: {', '.join(valid)}"
            )


# GITS chooses its steps among the points of a teacher grid, so the grid's size bounds the NFE
# budgets: the grid of GITS in every inner study (``study.schedules.DEFAULT_SETTINGS``; LD3
# starts from GITS) and that of the outer pruner's interim GITS fit (``study.outer``).
PEER_TEACHER_STEPS = TEACHER_STEPS  # the teacher grid of every peer that chooses among one
INTERIM_GITS_GRID = 32


def _nfe_bounds(
    budgets: Sequence[int],
    samplers: Sequence[str],
    peers: Sequence[str] | None,
    pruner: str | None,
    errors: list[str],
) -> None:
    """NFE budgets against the settings that bound them, checked before anything is created:
    GITS (and LD3, which starts from GITS) chooses its steps among a teacher grid of
    ``teacher_steps`` points, and the outer pruner's interim score fits GITS on a grid of
    ``INTERIM_GITS_GRID`` points at the primary budget."""

    bounds: list[tuple[int, str, Sequence[int]]] = []
    methods = list(peers if peers is not None else InnerConfig().peers)
    on_grid: dict[int, list[str]] = {}  # teacher grid -> the methods computed on it
    for name in methods:  # each method, and the methods it starts from (LD3: GITS)
        step: str | None = name
        while step is not None:
            method = PLACEMENT_METHODS[step]
            grid = int(method.settings.get("teacher_steps", PEER_TEACHER_STEPS))
            if method.teacher_grid and step not in on_grid.setdefault(grid, []):
                on_grid[grid].append(step)
            step = method.starts_from
    for grid, names in on_grid.items():
        if names:
            what = " and ".join(n.upper() for n in names)
            bounds.append((grid, f"inner.peers {methods} compute {what}", budgets))
    if (pruner or OuterConfig().pruner) != "none":  # an interim GITS fit (outer.interim)
        bounds.append(
            (
                INTERIM_GITS_GRID,
                f"outer.pruner = {pruner or OuterConfig().pruner!r} with outer.interim = 'gits' "
                "scores the primary budget with GITS",
                budgets[:1],
            )
        )
    for grid, why, checked in bounds:
        for s in samplers:
            over = [b for b in checked if steps_for_nfe(s, b) > grid]
            if over:
                errors.append(
                    f"inner.nfe_budgets {over} are too large for sampler {s!r}: {why} on a "
                    f"teacher grid of {grid} steps, which allows at most NFE "
                    f"{nfe_of(s, grid)} ({grid} steps) with {s!r}; use smaller budgets, or "
                    + (
                        "set outer.interim = 'karras' or outer.pruner = 'none'"
                        if "pruner" in why
                        else f"leave {' and '.join(methods)} out of inner.peers"
                    )
                )


def _cross_checks(values: dict[str, Any], errors: list[str]) -> None:
    """Checks between keys, run only where the keys involved are valid on their own."""
    top, outer, inner, net = values[""], values["outer"], values["inner"], values["network"]
    smin, smax = top.get("sigma_min"), top.get("sigma_max")
    if smin is not None and smax is not None and not smin < smax:
        errors.append(f"sigma_min must be < sigma_max={smax}, but got {smin}")
    pair = outer.get("interim_sigma_range")
    if pair and smin is not None and smax is not None and not smin <= pair[0] < pair[1] <= smax:
        errors.append(
            f"outer.interim_sigma_range must be [] (the default) or [low, high] with "
            f"sigma_min={smin} <= low < high <= sigma_max={smax}, but got {list(pair)}"
        )
    search, images = inner.get("search_images"), inner.get("fid_num_images")
    if search is not None and images is not None and not (search == 0 or 2 <= search <= images):
        errors.append(
            f"inner.search_images must be 0 (all of inner.fid_num_images) or an integer in "
            f"[2, inner.fid_num_images={images}], but got {search}"
        )
    budgets, samplers = inner.get("nfe_budgets"), inner.get("samplers")
    if budgets is not None and samplers is not None:

        def steps(sampler: str, budget: int) -> int:
            try:
                return steps_for_nfe(sampler, budget)
            except ValueError:
                return 0

        bad = [b for b in budgets if any(steps(s, b) < MIN_STEPS for s in samplers)]
        if bad:
            least = ", ".join(f"{s}: NFE >= {nfe_of(s, MIN_STEPS)}" for s in samplers)
            errors.append(
                f"inner.nfe_budgets must allow at least {MIN_STEPS} steps of every sampler in "
                f"inner.samplers ({least}), but got {list(budgets)}"
            )
    if budgets is not None and samplers is not None and not bad:
        gits_interim = (outer.get("interim") or OuterConfig().interim) == "gits"
        pruner = outer.get("pruner") if gits_interim else "none"
        _nfe_bounds(budgets, samplers, inner.get("peers"), pruner, errors)
    for section, table, choices in (
        ("outer", outer, OUTER_SAMPLERS),
        ("inner", inner, INNER_SAMPLERS),
    ):
        if table.get("sampler") == "cmaes" and importlib.util.find_spec("cmaes") is None:
            others = ", ".join(s for s in choices if s != "cmaes")
            errors.append(
                f"{section}.sampler = 'cmaes' needs the Python package cmaes (pip install "
                f"cmaes), which is not installed; or use one of {others}"
            )
    if inner.get("tune_churn") and samplers is not None and "heun" not in samplers:
        errors.append(
            "inner.tune_churn = true tunes S_churn of 'heun' only, so inner.samplers must "
            f"include 'heun', but got {list(samplers)}"
        )
    if outer.get("enqueue_baseline"):
        # EDM's defaults (Karras et al. 2022, Table 1): edm, lognormal(-1.2, 1.2), unit, none.
        weighting_space = outer.get("space") == "weighting"
        for key, needed in (
            ("parameterisations", "edm"),
            ("densities", None if weighting_space else "lognormal"),
            ("weightings", None if weighting_space else "unit"),
            ("adaptive", "none"),
        ):
            names = outer.get(key)
            if needed is not None and names is not None and needed not in names:
                errors.append(
                    f"outer.{key} must include {needed!r} when outer.enqueue_baseline = true "
                    f"(EDM's defaults are enqueued first), but got {list(names)}"
                )
    _literature_checks(outer, errors)
    objectives, budgets = outer.get("objectives"), inner.get("nfe_budgets")
    if objectives and budgets is not None and any(k not in budgets for k in objectives):
        errors.append(
            f"outer.objectives must be NFE budgets of inner.nfe_budgets={list(budgets)}, "
            f"but got {list(objectives)}"
        )
    dataset = top.get("dataset")
    if dataset in POINT_DATASETS:
        if net.get("name") not in (None, "mlp"):
            errors.append(
                f"network.name must be 'mlp' for the 2-D data set {dataset!r}, "
                f"but got {net['name']!r}"
            )
        if inner.get("fid_extractor") == "inception":
            errors.append(
                f"inner.fid_extractor must not be 'inception' (an image network) for "
                f"the 2-D data set {dataset!r}, but got 'inception'"
            )
    elif (
        isinstance(dataset, str) and not dataset.startswith("stats:") and net.get("name") == "mlp"
    ):  # (stats:PATH: tune-sampling of a model of its own; no network is built)
        errors.append(
            f"network.name must be 'unet' for the image data set {dataset!r}, but got 'mlp'"
        )
    if net.get("name") is not None and net.get("params") is not None:
        _check_network_params(net, errors)


def _build(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None, source: str) -> Config:
    errors: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config {source} must be a table of keys, but got {raw!r}")
    data: dict[str, Any] = _jsonable(raw)
    if overrides:
        _apply_overrides(data, overrides, errors)
    values: dict[str, dict[str, Any]] = {"": _check_section(data, "", errors)}
    for section in (k for k in SECTIONS if k):
        table = data.get(section, {})
        if not isinstance(table, Mapping):
            errors.append(
                f"{section} must be a table ([{section}]), but got {_describe_value(table)}"
            )
            table = {}
        values[section] = _check_section(table, section, errors)
    _cross_checks(values, errors)  # among the keys that are valid on their own
    if errors:
        errors = list(dict.fromkeys(errors))
        if len(errors) == 1:
            message = f"invalid config ({source}): {errors[0]}"
        else:
            message = f"invalid config ({source}), {len(errors)} errors:\n" + "\n".join(
                f"  {e}" for e in errors
            )
        raise ConfigError(message, errors)
    sections = {name: cls(**values[name]) for name, cls in SECTIONS.items() if name}
    return Config(**values[""], **sections)


# ----------------------------------------------------------------------------- loading


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {source} is not valid TOML: {exc}") from None


def load_config(path_or_preset: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a TOML config file or a preset by name, apply dotted ``overrides`` (e.g.
    ``{"outer.outer_trials": 3, "storage": "sqlite:///x.db"}``), check everything and return
    the :class:`Config`. Raises :class:`ConfigError` naming every fault."""
    spec = str(path_or_preset)
    path = Path(spec)
    presets = preset_names()
    if spec in presets and not path.is_file():
        text = presets_dir().joinpath(f"{spec}.toml").read_text(encoding="utf-8")
        source = f"preset {spec!r}"
    elif path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {spec!r}: {exc}") from None
        source = repr(spec)
    else:
        what = "is a directory, not a config file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"config {spec!r} {what}; give a TOML file or a preset name ({', '.join(presets)})"
        )
    return _build(_parse_toml(text, source), overrides, source)
