"""Search spaces of the bilevel study, and the maps from known configurations back to params.

Outer space (one trial = one training objective, Optuna's conditional "define-by-run" space):

- ``parameterisation``: categorical over ``config.outer.parameterisations``;
- ``density``: categorical over ``config.outer.densities``, with each family's parameters
  named ``density.<family>.<param>``: ``density.lognormal.P_mean`` in [-2.5, 1.5] and
  ``density.lognormal.P_std`` in [0.4, 2.5] (Karras et al. 2022, Table 1: P_mean = -1.2,
  P_std = 1.2), ``density.cosine.shift`` in [-6, 6] (Hoogeboom et al. 2023, shifted cosine),
  ``uniform`` without parameters (the run's lam range), ``density.piecewise.h{i}`` in
  [0.05, 1] (log) for ``i < config.outer.piecewise_bins``, ``density.laplace.mu`` in [-6, 6]
  and ``density.laplace.b`` in [0.25, 4] (log; Hang et al. 2024 use mu = 0, b = 0.5);
- ``weighting``: categorical over ``config.outer.weightings`` with ``weighting.snr.k`` in
  [-1, 1], ``weighting.min_snr.gamma`` in [0.5, 20] (log; Hang et al. 2023 use 5),
  ``weighting.sigmoid.b`` in [-8, 8] (Kingma & Gao 2023), ``weighting.piecewise.l{i}`` in
  [-3, 3] (log-weights);
- ``adaptive``: categorical over ``config.outer.adaptive`` (``"none"`` or a mechanism of
  ``objectives.adaptive`` with its default parameters).

With ``outer.space = "weighting"`` the outer space is the effective weighting ``W(λ)`` itself
(``objectives.wfamily``), its split between p and w, and the parameterisation:

- ``parameterisation`` and ``adaptive`` as above (without ``timewarp``, which replaces p and
  with it the point's W);
- ``outer.weighting_shape = "bump"``: ``wlam.center`` in the run's λ range,
  ``wlam.slope_low`` and ``wlam.slope_high`` in [-4, 4], ``wlam.knee`` in [0.05, 8] (log),
  ``wlam.curvature`` in [0, 2]; ``"piecewise"``: ``wlam.v{i}`` in [-30, 0] for
  ``i < outer.piecewise_bins`` (``ln W`` at equally spaced knots);
- the split of W between the sampling density p and the loss weight w
  (``objectives.wlam.point_description``: the ``wlam`` density and weighting): with
  ``outer.split = "power"``, ``wlam.split`` in [0, 1] and ``p_λ ∝ W^split``; with
  ``"shape"`` (the default), p is a shape of the same family, its own numbers
  ``wlam.p.center`` ... (or ``wlam.p.v{i}``) in the same ranges, and ``w = W/p``. Every
  literature configuration's p is such a shape (the Laplace schedule's within 2% L1), so
  there the enqueued points are the literature's objectives themselves where W is exact;
  p ∝ W^split is not (EDM's p peaks at λ = 2.4, its W near λ = -3.4).

:func:`objective_params` maps any described objective into it: a ``wlam`` point exactly, any
other (EDM's defaults, a literature configuration) by fitting its ``W`` and split
(``objectives.wlam.fit_description``), so the enqueued literature are their nearest points.

Inner space (one trial = one schedule at a fixed NFE budget):

- ``sampler``: categorical over ``config.inner.samplers`` (always a param, also when there is
  only one sampler: Optuna treats a one-choice categorical as fixed, and enqueued or
  warm-started params then say which sampler they are for);
- ``{sampler}.gap_{i}`` for ``i < n - 1`` in [0.02, 1] (log), ``n =
  models.samplers.steps_for_nfe(sampler, nfe)``: the gaps in lam between consecutive steps,
  normalised to fractions of the range inside ``models.schedules.from_gaps``. Named per
  sampler, since the same index means a different step for samplers with different ``n``;
  (``inner.space = "gaps"``, the default); or, with ``inner.space = "density"``, two
  parameters of a step density shared by every budget and sampler: ``density.a`` in [0, 1]
  and ``density.c`` in [0.5, 2] (log), the schedule ``g_a(s_i) = g_a(sigma_max) + t_i^c
  (g_a(sigma_min) - g_a(sigma_max))``, ``t_i = i / (n - 1)``, with ``g_a`` the Box-Cox map
  ``(s^a - 1) / a`` (``ln s`` at a = 0): karras of rho = 1/a at c = 1, loglinear at a = 0,
  c = 1 (:func:`density_sigmas`);
- ``sigma_min`` / ``sigma_max`` when ``config.inner.tune_sigma_range``: log ranges *inside*
  the run's range (the model was trained on ``[sigma_min, sigma_max]`` only):
  ``sigma_min`` in [sigma_min, min(50 sigma_min, sigma_min r^(1/3))] and ``sigma_max`` in
  [max(sigma_max / 10, sigma_max r^(-1/3)), sigma_max], ``r = sigma_max / sigma_min``;
- ``S_churn`` in [0, 40] for ``heun`` when ``config.inner.tune_churn``, with EDM's ImageNet
  settings ``S_min = 0.05, S_max = 50, S_noise = 1.003`` fixed (Karras et al. 2022, Table 5).
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import optuna
import torch
from optuna.trial import TrialState
from scipy.optimize import minimize_scalar
from torch import Tensor

from sigmatune.models.samplers import steps_for_nfe
from sigmatune.models.schedules import _append_zero, from_gaps, karras, loglinear, to_gaps, validate
from sigmatune.objectives.adaptive import make_adaptive
from sigmatune.objectives.loss import DiffusionObjective, objective_from_description
from sigmatune.objectives.wfamily import BUMP_BOUNDS, LOG_VALUE_BOUNDS
from sigmatune.objectives.wlam import fit_description, point_description, point_of_description
from sigmatune.study import optuna_adapter as adapter
from sigmatune.study import records
from sigmatune.study.config import Config
from sigmatune.study.optuna_adapter import PerTrialSeed

__all__ = [
    "BASELINES",
    "CHURN_FIXED",
    "DENSITY_SPACE",
    "GAP_RANGE",
    "S_CHURN_RANGE",
    "WEIGHTING_SPACE",
    "HalvingWithinSpread",
    "HyperbandWithinSpread",
    "InnerChoice",
    "MedianWithinSpread",
    "CmaStart",
    "WarmCmaEsSampler",
    "baseline_schedules",
    "cma_start",
    "edm_defaults_description",
    "inner_pruning",
    "make_inner_pruner",
    "make_inner_sampler",
    "make_outer_pruner",
    "make_outer_sampler",
    "objective_params",
    "schedule_params",
    "sigma_range_space",
    "starting_trials",
    "suggest_objective",
    "suggest_objective_description",
    "suggest_schedule",
]


class _Float(NamedTuple):
    low: float
    high: float
    log: bool = False


# Scalar parameters of each family: name -> range. Vector families (piecewise) are below.
DENSITY_SPACE: dict[str, dict[str, _Float]] = {
    "lognormal": {"P_mean": _Float(-2.5, 1.5), "P_std": _Float(0.4, 2.5)},
    "cosine": {"shift": _Float(-6.0, 6.0)},
    "uniform": {},
    "piecewise": {},
    "laplace": {"mu": _Float(-6.0, 6.0), "b": _Float(0.25, 4.0, log=True)},
}
WEIGHTING_SPACE: dict[str, dict[str, _Float]] = {
    "unit": {},
    "snr": {"k": _Float(-1.0, 1.0)},
    "min_snr": {"gamma": _Float(0.5, 20.0, log=True)},
    "sigmoid": {"b": _Float(-8.0, 8.0)},
    "piecewise": {},
}
# Piecewise families: description key, param prefix, range of each of the K values.
PIECEWISE_DENSITY = ("heights", "h", _Float(0.05, 1.0, log=True))
PIECEWISE_WEIGHTING = ("log_weights", "l", _Float(-3.0, 3.0))

EDM_DEFAULTS = {
    "parameterisation": "edm",
    "density": ("lognormal", {"P_mean": -1.2, "P_std": 1.2}),
    "weighting": ("unit", {}),
    "adaptive": "none",
}

# Gap ratios below 1/50 of the largest made almost every random schedule a disaster (FID
# spanning six orders of magnitude, which a GP cannot model); karras rho = 3..20 at up to 20
# steps keep every ratio above 0.05.
GAP_RANGE = _Float(0.02, 1.0, log=True)
DENSITY_A = _Float(0.0, 1.0)  # Box-Cox exponent: 1/rho of karras, 0 loglinear
DENSITY_C = _Float(0.5, 2.0, log=True)  # the warp t^c of the steps' fractions
DENSITY_RTOL = 1e-8  # how close a fitted density must reproduce a schedule (sigma, relative)
S_CHURN_RANGE = _Float(0.0, 40.0)
CHURN_FIXED = {"S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}
SIGMA_MIN_FACTOR = 50.0  # sigma_min may rise up to 50x ...
SIGMA_MAX_FACTOR = 80.0  # ... and sigma_max fall up to 80x when tune_sigma_range
BASELINES = ("karras_rho7", "loglinear")
KARRAS_RHO = 7.0
# Further starting points of every inner study (not baselines). With the sigma range
# searched: karras rho=7 on ranges spread over the range space (the shortest, the middle one,
# and the lowest sigma_min with the middle sigma_max), so the model-based search sees the
# range vary before it fits it (karras rho=3/5/12 on the full range, the points used before,
# never won an inner study of benchmarks/results/peers.json). With the range fixed: karras
# with other rho, a family of sane placements.
STARTING_RHOS = (3.0, 5.0, 12.0)
STARTING_RANGES = {  # name -> (position of sigma_min, of sigma_max) in their log spaces
    "karras_rho7_range_short": (1.0, 0.0),
    "karras_rho7_range_mid": (0.5, 0.5),
    "karras_rho7_range_low_mid": (0.0, 0.5),
}


# ----------------------------------------------------------------------------- helpers


def _suggest(trial: optuna.trial.BaseTrial, name: str, space: _Float) -> float:
    return float(trial.suggest_float(name, space.low, space.high, log=space.log))


def _check_in(name: str, value: Any, space: _Float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (space.low <= value <= space.high):
        raise ValueError(
            f"{name} must be in [{space.low}, {space.high}] to be in the search space, "
            f"but got {name}={value!r}"
        )
    return float(value)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(
            f"{name} {value!r} is not in the search space; valid: {', '.join(choices)}"
        )
    return value


def _family_space(kind: str, name: str) -> dict[str, _Float]:
    table = DENSITY_SPACE if kind == "density" else WEIGHTING_SPACE
    if name not in table:
        raise ValueError(
            f"no search space for {kind} {name!r}; spaces exist for: {', '.join(table)}"
        )
    return table[name]


# ----------------------------------------------------------------------------- outer


def suggest_objective_description(
    trial: optuna.trial.BaseTrial, config: Config, sigma_data: float | None = None
) -> dict[str, Any]:
    """Suggest a training objective and return it in ``DiffusionObjective.describe()`` form:
    ``{"parameterisation", "sigma_data", "density": {"name", "params"}, "weighting": {...},
    "adaptive": {"name", "params"} | None, "sigma_min", "sigma_max"}``."""
    outer = config.outer
    if outer.space == "weighting":
        return suggest_weighting_description(trial, config, sigma_data)
    parameterisation = trial.suggest_categorical("parameterisation", list(outer.parameterisations))
    families = {}
    for kind, choices, piecewise in (
        ("density", outer.densities, PIECEWISE_DENSITY),
        ("weighting", outer.weightings, PIECEWISE_WEIGHTING),
    ):
        name = trial.suggest_categorical(kind, list(choices))
        params: dict[str, Any] = {}
        if name == "piecewise":
            key, prefix, space = piecewise
            params[key] = [
                _suggest(trial, f"{kind}.piecewise.{prefix}{i}", space)
                for i in range(outer.piecewise_bins)
            ]
        else:
            for param, space in _family_space(kind, name).items():
                params[param] = _suggest(trial, f"{kind}.{name}.{param}", space)
        families[kind] = {"name": name, "params": params}
    adaptive = trial.suggest_categorical("adaptive", list(outer.adaptive))
    return {
        "parameterisation": parameterisation,
        "sigma_data": None if sigma_data is None else float(sigma_data),
        "density": families["density"],
        "weighting": families["weighting"],
        "adaptive": None if adaptive == "none" else {"name": adaptive, "params": {}},
        "sigma_min": float(config.sigma_min),
        "sigma_max": float(config.sigma_max),
    }


def suggest_objective(
    trial: optuna.trial.BaseTrial, config: Config, sigma_data: float
) -> DiffusionObjective:
    """Suggest a training objective (the outer space) and build it."""

    return objective_from_description(suggest_objective_description(trial, config, sigma_data))


def edm_defaults_description(config: Config, sigma_data: float | None = None) -> dict[str, Any]:
    """EDM's training objective (Karras et al. 2022, Table 1): ``edm`` preconditioning,
    ``lognormal(P_mean=-1.2, P_std=1.2)``, ``unit`` weighting (λ(σ) = 1/c_out² is the unit
    weight of F's loss), no adaptive mechanism; over the run's σ range."""
    desc = {
        "parameterisation": EDM_DEFAULTS["parameterisation"],
        "sigma_data": None if sigma_data is None else float(sigma_data),
        "density": {"name": EDM_DEFAULTS["density"][0], "params": dict(EDM_DEFAULTS["density"][1])},
        "weighting": {
            "name": EDM_DEFAULTS["weighting"][0],
            "params": dict(EDM_DEFAULTS["weighting"][1]),
        },
        "adaptive": None,
        "sigma_min": float(config.sigma_min),
        "sigma_max": float(config.sigma_max),
    }
    objective_params(desc, config)  # raises if EDM's defaults are not in this config's space
    return desc


def objective_params(
    description: Mapping[str, Any], config: Config | None = None
) -> dict[str, Any]:
    """Trial params (for ``study.enqueue_trial``) from which :func:`suggest_objective_description`
    reproduces ``description``. Raises ``ValueError`` for a configuration outside the space
    (and, given ``config``, outside its allowed names or piecewise bin count). With
    ``outer.space = "weighting"``, :func:`weighting_params`: the nearest point."""
    if config is not None and config.outer.space == "weighting":
        return weighting_params(description, config)
    params: dict[str, Any] = {"parameterisation": description["parameterisation"]}
    if config is not None:
        _check_choice(
            "parameterisation", params["parameterisation"], config.outer.parameterisations
        )
    for kind, piecewise in (("density", PIECEWISE_DENSITY), ("weighting", PIECEWISE_WEIGHTING)):
        family = description[kind]
        name, values = family["name"], dict(family.get("params") or {})
        if config is not None:
            choices = config.outer.densities if kind == "density" else config.outer.weightings
            _check_choice(kind, name, choices)
        params[kind] = name
        if name == "piecewise":
            key, prefix, space = piecewise
            vector = list(values.pop(key, None) or [])
            if config is not None and len(vector) != config.outer.piecewise_bins:
                raise ValueError(
                    f"{kind} piecewise {key} must have outer.piecewise_bins="
                    f"{config.outer.piecewise_bins} values to be in the search space, "
                    f"but got {key}={vector}"
                )
            if not vector:
                raise ValueError(f"{kind} piecewise needs {key}, but got params={values}")
            for i, v in enumerate(vector):
                params[f"{kind}.piecewise.{prefix}{i}"] = _check_in(f"{key}[{i}]", v, space)
        else:
            for param, space in _family_space(kind, name).items():
                if param not in values:
                    raise ValueError(
                        f"{kind} {name!r} needs parameter {param!r}, but got params={values}"
                    )
                params[f"{kind}.{name}.{param}"] = _check_in(param, values.pop(param), space)
        if kind == "density" and name == "uniform":
            _check_uniform_range(values, description)
            values = {}
        if values:
            raise ValueError(
                f"{kind} {name!r} parameters {sorted(values)} are not in the "
                f"search space, but got params={family.get('params')}"
            )
    params["adaptive"] = _adaptive_param(description, config)
    return params


def _adaptive_param(description: Mapping[str, Any], config: Config | None) -> str:
    adaptive = description.get("adaptive")
    name = "none" if not adaptive else adaptive["name"]
    if adaptive and adaptive.get("params"):
        _check_adaptive_defaults(name, dict(adaptive["params"]))
    if config is not None:
        _check_choice("adaptive", name, config.outer.adaptive)
    return name


# ----------------------------------------------------------------------------- outer: W(lambda)

SPLIT_RANGE = _Float(0.0, 1.0)
WLAM_PREFIX = "wlam."
SAMPLING_PREFIX = "wlam.p."


def weighting_space(config: Config) -> dict[str, _Float]:
    """The shape's numbers of the "weighting" space (param name without ``wlam.`` -> range):
    the bump's five (``center`` over the run's λ range) or ``v{i}`` for the piecewise knots."""

    if config.outer.weighting_shape == "piecewise":
        return {f"v{i}": _Float(*LOG_VALUE_BOUNDS) for i in range(config.outer.piecewise_bins)}
    lam_min = -2 * math.log(float(config.sigma_max))
    lam_max = -2 * math.log(float(config.sigma_min))
    return {
        "center": _Float(lam_min, lam_max),
        **{k: _Float(lo, hi, log=(k == "knee")) for k, (lo, hi) in BUMP_BOUNDS.items()},
    }


def _shape_from_numbers(config: Config, numbers: Mapping[str, float]) -> dict[str, Any]:
    if config.outer.weighting_shape == "piecewise":
        return {"log_values": [numbers[f"v{i}"] for i in range(config.outer.piecewise_bins)]}
    return dict(numbers)


def _suggest_shape(trial: optuna.trial.BaseTrial, config: Config, prefix: str) -> dict[str, Any]:
    numbers = {
        key: _suggest(trial, prefix + key, space) for key, space in weighting_space(config).items()
    }
    return _shape_from_numbers(config, numbers)


def suggest_weighting_description(
    trial: optuna.trial.BaseTrial, config: Config, sigma_data: float | None
) -> dict[str, Any]:
    """Suggest a point of the "weighting" space (parameterisation, W(λ)'s shape, its split
    into p and w, adaptive) and return its objective (``objectives.wlam.point_description``)."""

    if sigma_data is None:
        raise ValueError(
            "outer.space = 'weighting' needs the data's sigma_data to build an objective "
            "(its loss weight is written in the parameterisation's space), but got None"
        )
    outer = config.outer
    parameterisation = trial.suggest_categorical("parameterisation", list(outer.parameterisations))
    shape = _suggest_shape(trial, config, WLAM_PREFIX)
    if outer.split == "power":
        split, sampling = _suggest(trial, WLAM_PREFIX + "split", SPLIT_RANGE), None
    else:
        split, sampling = 1.0, {**_suggest_shape(trial, config, SAMPLING_PREFIX), "split": 1.0}
    adaptive = trial.suggest_categorical("adaptive", weighting_adaptive(config))
    return point_description(
        shape,
        split,
        parameterisation,
        float(sigma_data),
        float(config.sigma_min),
        float(config.sigma_max),
        None if adaptive == "none" else {"name": adaptive, "params": {}},
        sampling,
    )


@functools.lru_cache(maxsize=256)
def _fit_cached(description_json: str, shape: str, bins: int, split: str) -> Any:

    return fit_description(json.loads(description_json), shape, bins, split)


def weighting_fit(description: Mapping[str, Any], config: Config) -> Any:
    """``objectives.wlam.fit_description`` of ``description`` in the config's shape and split
    (cached: a study maps each literature configuration once per process)."""
    key = json.dumps(dict(description), sort_keys=True, default=float)
    outer = config.outer
    return _fit_cached(key, outer.weighting_shape, outer.piecewise_bins, outer.split)


def _shape_params(
    shape: Mapping[str, Any], config: Config, prefix: str, what: str
) -> dict[str, float]:
    """Trial params ``prefix + number`` of one shape, checked against the space."""
    shape = dict(shape)
    space = weighting_space(config)
    if config.outer.weighting_shape == "piecewise":
        values = list(shape.pop("log_values", None) or [])
        if len(values) != config.outer.piecewise_bins or shape:
            raise ValueError(
                f"a piecewise {what} needs outer.piecewise_bins={config.outer.piecewise_bins} "
                f"log_values to be in the search space (outer.weighting_shape = 'piecewise'), "
                f"but got log_values={values} and {shape}"
            )
        shape = {f"v{i}": v for i, v in enumerate(values)}
    elif "log_values" in shape:
        raise ValueError(
            f"a piecewise {what} is not in the search space with outer.weighting_shape = "
            f"'bump', but got log_values={shape['log_values']}"
        )
    params = {}
    for key, value in shape.items():
        if key not in space:
            raise ValueError(f"{key} is not a number of the {what} search space {list(space)}")
        params[prefix + key] = _check_in(key, value, space[key])
    return params


def weighting_params(description: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """Trial params of the "weighting" space for ``description``: a ``wlam`` point exactly;
    any other objective by its nearest point (:func:`weighting_fit`; its parameterisation and
    adaptive mechanism kept). Raises ``ValueError`` for a point outside the space."""

    point = point_of_description(description)
    if point is None:
        fit = weighting_fit(description, config)
        shape, split, sampling = dict(fit.shape), fit.split, fit.sampling
    else:
        shape, split, sampling = point
    params: dict[str, Any] = {
        "parameterisation": _check_choice(
            "parameterisation", description["parameterisation"], config.outer.parameterisations
        ),
        **_shape_params(shape, config, WLAM_PREFIX, "W(lambda)"),
    }
    if config.outer.split == "power":
        if sampling is not None:
            raise ValueError(
                "a point with a sampling density of its own is not in the search space with "
                f"outer.split = 'power' (p ∝ W^split), but got sampling={sampling}"
            )
        params[WLAM_PREFIX + "split"] = _check_in("split", split, SPLIT_RANGE)
    else:
        if sampling is None:
            raise ValueError(
                "a point with p ∝ W^split is not in the search space with outer.split = "
                f"'shape' (p a shape of its own), but got split={split}"
            )
        sampling = dict(sampling)
        if sampling.pop("split", 1.0) != 1.0:
            raise ValueError(
                f"the sampling density's split must be 1 with outer.split = 'shape', but got "
                f"sampling={point_of_description(description)}"
            )
        params.update(_shape_params(sampling, config, SAMPLING_PREFIX, "sampling density"))
    params["adaptive"] = _check_choice(
        "adaptive", _adaptive_param(description, config), weighting_adaptive(config)
    )
    return params


# mechanisms that replace the sampling density p, and so the point's W (CDCD's time warping)
REPLACES_DENSITY = ("timewarp",)


def weighting_adaptive(config: Config) -> list[str]:
    """``outer.adaptive`` without the mechanisms that replace p (:data:`REPLACES_DENSITY`):
    in the "weighting" space a point's W is the objective's, so only mechanisms that keep it
    (``importance``) or learn a factor on it (``uncertainty``, from 1) are searched."""
    return [a for a in config.outer.adaptive if a not in REPLACES_DENSITY]


def _check_uniform_range(values: dict[str, Any], description: Mapping[str, Any]) -> None:
    """The space's ``uniform`` is the run's lam range; a describe() that spells it out is fine."""
    expected = {
        "lam_min": -2 * math.log(float(description["sigma_max"])),
        "lam_max": -2 * math.log(float(description["sigma_min"])),
    }
    for key in list(values):
        v = values[key]
        if key in expected and (
            v is None or math.isclose(v, expected[key], rel_tol=1e-9, abs_tol=1e-12)
        ):
            values.pop(key)
    if values:
        raise ValueError(
            f"density 'uniform' is searched over the run's whole lam range "
            f"{expected}, but got params={values}"
        )


def _check_adaptive_defaults(name: str, given: dict[str, Any]) -> None:

    defaults = make_adaptive(name, {}).params()
    differing = {k: v for k, v in given.items() if defaults.get(k) != v}
    if differing:
        raise ValueError(
            f"adaptive {name!r} is searched with its default parameters "
            f"{defaults}, but got params={given}"
        )


# ----------------------------------------------------------------------------- inner


class InnerChoice(NamedTuple):
    """One inner trial's choice: sampler name, schedule (float64, last 0), sampler kwargs."""

    sampler: str
    sigmas: Tensor
    sampler_kwargs: dict[str, Any]


def sigma_range_space(config: Config) -> tuple[_Float, _Float]:
    """The log ranges of ``sigma_min`` and ``sigma_max`` when ``tune_sigma_range``: inside the
    run's range and apart: sigma_min may rise up to 50x and sigma_max fall up to 80x (to
    about 1.2 for EDM's 80: a 2-D toy with sigma_data 0.6 wants about 2 at NFE 5), and each
    stays within 40% of the log range from its end, so every sigma_min is below every
    sigma_max."""
    smin, smax = float(config.sigma_min), float(config.sigma_max)
    r = smax / smin
    low_max = min(smin * SIGMA_MIN_FACTOR, smin * r**0.4)
    high_min = max(smax / SIGMA_MAX_FACTOR, smax * r**-0.4)
    return _Float(smin, low_max, log=True), _Float(high_min, smax, log=True)


def _steps(sampler: str, nfe: int) -> int:

    return steps_for_nfe(sampler, nfe)


def _box_cox(s: Tensor, a: float) -> Tensor:
    """``(s^a - 1) / a``, ``ln s`` at a = 0 (continuous in a)."""
    logs = s.log()
    return logs if a == 0 else torch.expm1(a * logs) / a


def _box_cox_inv(y: Tensor, a: float) -> Tensor:
    return y.exp() if a == 0 else torch.exp(torch.log1p(a * y) / a)


def density_sigmas(n: int, sigma_min: float, sigma_max: float, a: float, c: float) -> Tensor:
    """The ``n``-step schedule of the step density ``(a, c)`` over ``[sigma_min, sigma_max]``
    (see the module docstring), float64, ends exact, then 0: karras(n, rho=1/a) at c = 1,
    loglinear at a = 0, c = 1."""

    ends = torch.tensor([sigma_max, sigma_min], dtype=torch.float64)
    if n == 1:
        return _append_zero(ends[:1])
    t = torch.linspace(0, 1, n, dtype=torch.float64) ** float(c)
    y = _box_cox(ends, float(a))
    out = _box_cox_inv(y[0] + t * (y[1] - y[0]), float(a))
    out[0], out[-1] = sigma_max, sigma_min
    return _append_zero(out)


def fit_density(sigmas: Tensor) -> tuple[float, float]:
    """``(a, c)`` of :func:`density_sigmas` closest to a schedule's positive sigmas: for each
    ``a``, the steps' fractions ``u_i`` of the way in ``g_a`` give ``c_i = ln u_i / ln t_i``,
    equal for a schedule of the family; ``a`` minimises their spread (bounded Brent), ``c`` is
    their mean, both clipped into the space. Check the result with :func:`density_sigmas`."""

    s = sigmas[sigmas > 0].to(torch.float64)
    n = s.numel()
    if n <= 2:
        return 1.0 / KARRAS_RHO, 1.0  # no interior step: any density gives it
    t = torch.linspace(0, 1, n, dtype=torch.float64)[1:-1]

    def cs(a: float) -> Tensor:
        y = _box_cox(s, a)
        u = ((y[1:-1] - y[0]) / (y[-1] - y[0])).clamp(1e-300, 1 - 1e-16)
        return u.log() / t.log()

    def spread(a: float) -> float:
        c = cs(a).log()
        return float(((c - c.mean()) ** 2).mean()) if c.numel() > 1 else 0.0

    if n == 3:  # one interior step: the density of c = 1 through it (a solves u = 1/2)
        found = minimize_scalar(
            lambda a: float((cs(a)[0] - 1.0) ** 2),
            bounds=(DENSITY_A.low, DENSITY_A.high),
            method="bounded",
            options={"xatol": 1e-13},
        )
        a = float(found.x)
        if abs(float(cs(a)[0]) - 1.0) > 1e-6:  # no such a: keep karras rho=7's, fit c
            a = 1.0 / KARRAS_RHO
        c = float(cs(a)[0])
    else:
        grid = [DENSITY_A.low + k * (DENSITY_A.high - DENSITY_A.low) / 40 for k in range(41)]
        start = min(grid, key=spread)
        step = (DENSITY_A.high - DENSITY_A.low) / 40
        found = minimize_scalar(
            spread,
            bounds=(max(DENSITY_A.low, start - step), min(DENSITY_A.high, start + step)),
            method="bounded",
            options={"xatol": 1e-14},
        )
        a = float(found.x) if spread(float(found.x)) <= spread(start) else start
        c = float(cs(a).log().mean().exp())

    # snap to karras of a whole rho, or loglinear, where that reproduces the schedule better
    # (Brent's a is within ~1e-9 of 1/rho; the named members are then exact)
    def misfit(a_: float, c_: float) -> float:
        r = density_sigmas(n, float(s[-1]), float(s[0]), a_, c_)[:-1]
        return float(((r - s).abs() / s).max())

    best = misfit(a, c)
    for exact in (0.0, *(1.0 / rho for rho in range(1, 41))):
        if abs(a - exact) < 1e-6 and misfit(exact, 1.0) <= best:
            a, c, best = exact, 1.0, misfit(exact, 1.0)
    a = min(max(a, DENSITY_A.low), DENSITY_A.high)
    c = min(max(c, DENSITY_C.low), DENSITY_C.high)
    return a, c


def fit_density_error(sigmas: Tensor) -> tuple[float, float, float]:
    """``(a, c, error)``: :func:`fit_density` and the largest relative difference between the
    schedule and the density's schedule over its own ends (a member of the family: ~1e-15)."""
    s = sigmas.to(torch.float64)
    a, c = fit_density(s)
    rebuilt = density_sigmas(s.numel() - 1, float(s[-2]), float(s[0]), a, c)
    return a, c, float(((rebuilt[:-1] - s[:-1]).abs() / s[:-1]).max())


def suggest_schedule(trial: optuna.trial.BaseTrial, config: Config, nfe: int) -> InnerChoice:
    """Suggest a sampler and its step locations at budget ``nfe`` (the inner space)."""

    sampler = trial.suggest_categorical("sampler", list(config.inner.samplers))
    n = _steps(sampler, nfe)
    smin, smax = float(config.sigma_min), float(config.sigma_max)
    if config.inner.tune_sigma_range:
        min_space, max_space = sigma_range_space(config)
        smin = _suggest(trial, "sigma_min", min_space)
        smax = _suggest(trial, "sigma_max", max_space)
    if config.inner.space == "density":
        a = _suggest(trial, "density.a", DENSITY_A)
        c = _suggest(trial, "density.c", DENSITY_C)
        sigmas = density_sigmas(n, smin, smax, a, c)
    else:
        gaps = [_suggest(trial, f"{sampler}.gap_{i}", GAP_RANGE) for i in range(n - 1)]
        sigmas = from_gaps(gaps, smin, smax)
    kwargs: dict[str, Any] = {}
    if config.inner.tune_churn and sampler == "heun":
        kwargs = {"S_churn": _suggest(trial, "S_churn", S_CHURN_RANGE), **CHURN_FIXED}
    return InnerChoice(sampler, sigmas, kwargs)


def schedule_params(
    sigmas: Tensor | Sequence[float],
    sampler: str,
    sampler_kwargs: Mapping[str, Any] | None = None,
    *,
    config: Config,
    nfe: int,
    rtol: float = 1e-10,
) -> dict[str, Any]:
    """Trial params from which :func:`suggest_schedule` reproduces ``sigmas`` (to ``rtol``,
    relative, in every sigma) for ``sampler`` at budget ``nfe``.

    The gaps are ``to_gaps(sigmas)`` scaled so the largest is 1; a gap ratio below 0.02 is
    clipped into the space and the resulting schedule checked against ``rtol``. Raises
    ``ValueError`` where the schedule is not in the space.
    """

    s = validate(sigmas)
    _check_choice("sampler", sampler, config.inner.samplers)
    n = _steps(sampler, nfe)
    if s.numel() - 1 != n:
        raise ValueError(
            f"sigmas must have {n + 1} values ({n} steps of {sampler} at NFE {nfe}),"
            f" but got {s.numel()} values: sigmas={s.tolist()}"
        )
    params: dict[str, Any] = {"sampler": sampler}
    smin, smax = float(s[-2]), float(s[0])
    if config.inner.tune_sigma_range:
        min_space, max_space = sigma_range_space(config)
        params["sigma_min"] = _check_in("sigma_min", smin, min_space)
        params["sigma_max"] = _check_in("sigma_max", smax, max_space)
    else:
        for key, value in (("sigma_min", smin), ("sigma_max", smax)):
            expected = float(getattr(config, key))
            if not math.isclose(value, expected, rel_tol=rtol):
                raise ValueError(
                    f"the schedule's {key} must equal the config's {key}={expected} (or set "
                    f"inner.tune_sigma_range = true), but got {key}={value}"
                )
    if config.inner.space == "density":
        a, c, error = fit_density_error(s)  # the ends are the schedule's (checked above)
        params["density.a"], params["density.c"] = a, c
        if not error <= max(rtol, DENSITY_RTOL):
            raise ValueError(
                f"sigmas are not in the search space (inner.space = 'density'): the nearest "
                f"schedule of the density family (a={a:.4g}, c={c:.4g}) differs by "
                f"{error:.3g} relative, sigmas={s.tolist()}"
            )
        fractions = s.new_zeros(0)
    else:
        fractions = to_gaps(s)
    if fractions.numel():
        gaps = (fractions / fractions.max()).clamp(GAP_RANGE.low, GAP_RANGE.high)
        for i, g in enumerate(gaps.tolist()):
            params[f"{sampler}.gap_{i}"] = g
        rebuilt = from_gaps(
            gaps,
            params.get("sigma_min", float(config.sigma_min)),
            params.get("sigma_max", float(config.sigma_max)),
        )
        error = ((rebuilt[:-1] - s[:-1]).abs() / s[:-1]).max().item()
        if not error <= rtol:
            raise ValueError(
                f"sigmas are not in the search space (a gap in lam below {GAP_RANGE.low} of the "
                f"largest): the nearest schedule differs by {error:.3g} relative (allowed "
                f"rtol={rtol}), sigmas={s.tolist()}"
            )
    kwargs = dict(sampler_kwargs or {})
    churn = float(kwargs.pop("S_churn", 0.0))
    fixed = {k: kwargs.pop(k) for k in list(kwargs) if k in CHURN_FIXED}
    if kwargs:
        raise ValueError(
            f"sampler_kwargs {sorted(kwargs)} are not in the search space; it has "
            f"S_churn (with {CHURN_FIXED}) only, but got {dict(sampler_kwargs)}"
        )
    if config.inner.tune_churn and sampler == "heun":
        params["S_churn"] = _check_in("S_churn", churn, S_CHURN_RANGE)
        differing = {k: v for k, v in fixed.items() if v != CHURN_FIXED[k]}
        if differing and churn > 0:
            raise ValueError(
                f"{sorted(differing)} are fixed at {CHURN_FIXED} in the search "
                f"space, but got {dict(sampler_kwargs)}"
            )
    elif churn != 0.0:
        raise ValueError(
            f"S_churn is searched only for heun with inner.tune_churn = true, "
            f"but got S_churn={churn} for {sampler}"
        )
    return params


def starting_schedules(config: Config, nfe: int) -> dict[str, InnerChoice]:
    """Extra first points of an inner study, with the baselines' sampler: with
    ``inner.tune_sigma_range``, karras rho=7 on the ranges of :data:`STARTING_RANGES`; else
    ``karras_rho{r}`` for ``r`` in :data:`STARTING_RHOS` over the run's range."""

    sampler = config.inner.samplers[0]
    n = _steps(sampler, nfe)
    smin, smax = float(config.sigma_min), float(config.sigma_max)
    if not config.inner.tune_sigma_range:
        return {
            f"karras_rho{rho:g}": InnerChoice(sampler, karras(n, smin, smax, rho), {})
            for rho in STARTING_RHOS
        }
    min_space, max_space = sigma_range_space(config)

    def at(space: _Float, u: float) -> float:
        if u in (0.0, 1.0):  # the bound itself, exactly
            return float(space.low if u == 0.0 else space.high)
        return math.exp(math.log(space.low) + u * (math.log(space.high) - math.log(space.low)))

    return {
        name: InnerChoice(sampler, karras(n, at(min_space, u), at(max_space, v), KARRAS_RHO), {})
        for name, (u, v) in STARTING_RANGES.items()
    }


def baseline_schedules(config: Config, nfe: int) -> dict[str, InnerChoice]:
    """The inner baselines at budget ``nfe`` for the first sampler of ``config.inner.samplers``,
    over the run's σ range: ``karras_rho7`` (Karras et al. 2022, eq. 5, ρ = 7) and ``loglinear``
    (uniform in logSNR)."""

    sampler = config.inner.samplers[0]
    n = _steps(sampler, nfe)
    smin, smax = float(config.sigma_min), float(config.sigma_max)
    return {
        "karras_rho7": InnerChoice(sampler, karras(n, smin, smax, KARRAS_RHO), {}),
        "loglinear": InnerChoice(sampler, loglinear(n, smin, smax), {}),
    }


# ----------------------------------------------------------------------------- samplers, pruners


def _quiet(factory: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factory(*args, **kwargs)


def make_outer_sampler(config: Config) -> optuna.samplers.BaseSampler:
    """TPE over the conditional outer space (multivariate, grouped by the branch taken,
    constant liar for parallel workers), random search, or ``"cmaes"``: CMA-ES warm-started
    at the best scored literature configuration (:class:`WarmCmaEsSampler`, its step from the
    spread of the good ones, its categorical params the best one's). CMA-ES minimises one
    objective: a multi-objective study (``outer.objectives``) with ``"cmaes"`` gets TPE, so
    that ``--set 'outer.objectives=[5, 9]'`` works with every preset. Reseeded per trial
    from ``(config.seed, trial number)`` so that workers sharing the study draw different
    points and one process with the same seed makes the same study."""

    if config.outer.sampler == "random":
        return PerTrialSeed(optuna.samplers.RandomSampler(seed=config.seed), config.seed)
    if config.outer.sampler == "cmaes" and len(outer_objectives(config)) == 1:
        warm = WarmCmaEsSampler(seed=config.seed, sigma0=None, categorical_from_best=True)
        return PerTrialSeed(warm, config.seed)
    tpe = _quiet(
        optuna.samplers.TPESampler,
        multivariate=True,
        group=True,
        constant_liar=True,
        seed=config.seed,
        n_startup_trials=outer_startup_trials(config),
    )
    return PerTrialSeed(tpe, config.seed)


def outer_startup_trials(config: Config) -> int:
    """Finished trials before TPE models the space. The enqueued configurations (EDM's and
    the literature's) count: they are the start-up, so TPE models from the first trial after
    them, and a budget is never spent on random draws (Optuna's default is 10)."""
    enqueued = int(config.outer.enqueue_baseline) + len(config.outer.literature)
    return max(2, min(10, enqueued, config.outer.outer_trials // 4 or 2))


def outer_objectives(config: Config) -> tuple[int, ...]:
    """The NFE budgets the outer study minimises: ``outer.objectives``, or the primary one."""
    return tuple(config.outer.objectives) or (config.inner.nfe_budgets[0],)


def _inner_startup_trials(config: Config) -> int:
    """Complete trials (baselines and warm starts count) before the model-based sampler."""
    return min(10, max(len(BASELINES) + len(STARTING_RHOS) + 1, config.inner.inner_trials // 3))


def make_inner_sampler(config: Config, seed: int) -> optuna.samplers.BaseSampler:
    """GPSampler by default. Its search space is the intersection of the trials' spaces, so
    with several samplers in ``inner.samplers`` the per-sampler gaps fall outside it and are
    drawn at random; choose ``inner.sampler = "tpe"`` (grouped) to model them then.
    ``"cmaes"``: :class:`WarmCmaEsSampler` (CMA-ES from the best starting point; it tied with
    GP and beat TPE at equal denoiser evaluations in ``benchmarks/inner_sampler.py``)."""
    startup = _inner_startup_trials(config)
    if config.inner.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.inner.sampler == "cmaes":
        return WarmCmaEsSampler(seed=seed)
    if config.inner.sampler == "tpe":
        return _quiet(
            optuna.samplers.TPESampler,
            multivariate=True,
            group=True,
            constant_liar=True,
            seed=seed,
            n_startup_trials=startup,
        )
    return optuna.samplers.GPSampler(
        seed=seed,
        n_startup_trials=startup,
        warn_independent_sampling=len(config.inner.samplers) == 1,
    )


CMA_SIGMA0 = 0.1  # the warm CMA-ES's first step size, as a fraction of each param's range
# sigma0 from the spread of the good starting points (sigma0=None): the best third of them
# (at least CMA_GOOD_LEAST), its per-param standard deviation in Optuna's [0, 1] scale
# averaged over the params, clipped to CMA_SPREAD_BOUNDS: never a step too small to move off
# the best point, never one so wide that the search is no longer local to it
CMA_GOOD_LEAST = 2
CMA_SPREAD_BOUNDS = (0.05, 0.25)


class CmaStart(NamedTuple):
    """Where :class:`WarmCmaEsSampler` starts: the best starting trial, the float (and int)
    params CMA-ES searches with their distributions, ``x0`` and ``sigma0``."""

    best: optuna.trial.FrozenTrial
    space: dict[str, optuna.distributions.BaseDistribution]
    x0: dict[str, Any]
    sigma0: float


def _searchable(dist: optuna.distributions.BaseDistribution) -> bool:
    """A param CMA-ES can move: a float or int range of more than one value."""
    numeric = (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)
    return isinstance(dist, numeric) and not dist.single()


def starting_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The scored starting points, best first: the enqueued trials that finished with a value
    (complete ones, then pruned ones, which carry their last interim value: those that trained
    longer first), or a study's complete trials where none was enqueued. Empty while an
    enqueued trial is still waiting or running (a worker beside this one scores it). Read
    from the stored trials alone, so a resumed study starts from the same ones; every trial
    of the study, also where Optuna shows a sampler one Hyperband bracket of it."""
    trials = adapter.whole_study(study).get_trials(deepcopy=False)
    enqueued = [t for t in trials if adapter.is_enqueued(t)]
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in enqueued):
        return []
    # the enqueued ones, complete or pruned; with none enqueued, the complete trials
    states = (TrialState.COMPLETE, TrialState.PRUNED) if enqueued else (TrialState.COMPLETE,)
    finished = [
        t
        for t in (enqueued or trials)
        if t.state in states and t.value is not None and math.isfinite(t.value)
    ]

    def rank(t: optuna.trial.FrozenTrial) -> tuple[bool, int, float, int]:
        complete = t.state == TrialState.COMPLETE
        trained = 0 if complete else max(t.intermediate_values, default=0)
        return (not complete, -trained, float(t.value), t.number)

    return sorted(finished, key=rank)


def cma_start(
    study: optuna.Study, sigma0: float | None = CMA_SIGMA0, *, branch: bool = False
) -> CmaStart | None:
    """The start of :class:`WarmCmaEsSampler` in ``study``: ``x0`` the best starting trial's
    searchable params; ``sigma0`` the given fraction of each range, or with ``None`` the
    spread of the good starting trials (:data:`CMA_GOOD_LEAST`, :data:`CMA_SPREAD_BOUNDS`).
    The params searched are the best one's with ``branch`` (the proposals take its branch of
    a conditional space), otherwise those of them that every complete trial has (Optuna's
    intersection search space). ``None`` while no starting trial is scored, or when there is
    no param to search."""
    ranked = starting_trials(study)
    if not ranked:
        return None
    best = ranked[0]
    space = {k: d for k, d in best.distributions.items() if _searchable(d)}
    if not branch:
        whole = adapter.whole_study(study)
        complete = whole.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        space = {
            k: d for k, d in space.items() if all(t.distributions.get(k) == d for t in complete)
        }
    if not space:
        return None
    x0 = {k: best.params[k] for k in space}
    if sigma0 is None:
        good = ranked[: max(CMA_GOOD_LEAST, math.ceil(len(ranked) / 3))]
        sigma0 = _spread(good, space)
    return CmaStart(best, space, x0, float(sigma0))


def _spread(
    trials: Sequence[optuna.trial.FrozenTrial],
    space: Mapping[str, optuna.distributions.BaseDistribution],
) -> float:
    """The mean over ``space``'s params of their standard deviation among ``trials`` (those
    with the same param and distribution, two at least), each in its [0, 1] scale (log for a
    log range), clipped to :data:`CMA_SPREAD_BOUNDS`; :data:`CMA_SIGMA0` where no param has
    two values."""

    def unit(value: float, dist: Any) -> float:
        low, high, v = float(dist.low), float(dist.high), float(value)
        if dist.log:
            low, high, v = math.log(low), math.log(high), math.log(v)
        return (v - low) / (high - low)

    stds = []
    for name, dist in space.items():
        xs = [unit(t.params[name], dist) for t in trials if t.distributions.get(name) == dist]
        if len(xs) >= 2:
            mean = sum(xs) / len(xs)
            stds.append(math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)))
    if not stds:
        return CMA_SIGMA0
    low, high = CMA_SPREAD_BOUNDS
    return min(high, max(low, sum(stds) / len(stds)))


class WarmCmaEsSampler(optuna.samplers.BaseSampler):
    """CMA-ES (Hansen 2016; Optuna's ``CmaEsSampler``, the ``cmaes`` package) started at the
    study's best scored starting point (:func:`starting_trials`: the enqueued trials, once
    every one has finished) when the search draws its own trials (:func:`cma_start`): ``x0``
    its float params, ``sigma0`` :data:`CMA_SIGMA0` of each param's range (Optuna scales them
    to [0, 1]) or, with ``sigma0=None``, the spread of the good starting points, so the
    search is local around the best one. With ``categorical_from_best`` (the outer study) its
    categorical params are the best one's too, so the proposals take its branch of the
    conditional space and CMA-ES searches that branch's params; otherwise (the inner study)
    they are drawn at random and CMA-ES searches the params every complete trial has. The
    starting points themselves (enqueued, their params fixed) are drawn at random by this
    sampler, as by every other one, as is a trial while a starting point is still to be
    scored (TPE's start-up likewise).

    Everything is derived from the stored trials for each trial (the start; CMA-ES's state,
    which Optuna keeps in the trials' system attrs), so a resumed study goes on from the same
    start. CMA-ES learns from complete trials only (a pruned trial's value is an interim
    score, on another scale), a generation being its population (6 trials for 2 params). One
    objective only (CMA-ES's)."""

    def __init__(
        self,
        seed: int | None = None,
        *,
        sigma0: float | None = CMA_SIGMA0,
        categorical_from_best: bool = False,
    ) -> None:
        self._seed = seed
        self._sigma0 = sigma0
        self._categorical_from_best = categorical_from_best
        self._random_sampler = optuna.samplers.RandomSampler(seed=seed)  # PerTrialSeed's name

    def start(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> CmaStart | None:
        """Where CMA-ES starts for ``trial``; ``None`` for a starting point or before one is
        scored (the trial is drawn at random)."""
        if adapter.is_enqueued(trial):
            return None
        return cma_start(study, self._sigma0, branch=self._categorical_from_best)

    def _cma(self, start: CmaStart) -> optuna.samplers.CmaEsSampler:
        with warnings.catch_warnings():  # x0 and sigma0: deprecated from Optuna 4.9 (to 6.0)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.CmaEsSampler(
                x0=start.x0,
                sigma0=start.sigma0,
                n_startup_trials=0,
                independent_sampler=self._random_sampler,
                warn_independent_sampling=False,
                seed=self._seed,
            )

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        start = self.start(study, trial)
        return {} if start is None else dict(start.space)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        search_space: dict[str, optuna.distributions.BaseDistribution],
    ) -> dict[str, Any]:
        start = self.start(study, trial) if search_space else None
        if start is None or set(search_space) != set(start.space):
            return {}
        return self._cma(start).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        if self._categorical_from_best and isinstance(
            param_distribution, optuna.distributions.CategoricalDistribution
        ):
            start = self.start(study, trial)
            if start is not None and start.best.distributions.get(param_name) == param_distribution:
                return start.best.params[param_name]
        return self._random_sampler.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._random_sampler.reseed_rng()


OUTER_REDUCTION_FACTOR = 3


class _KeepWithinSpread:
    """Optuna's pruner, except that a trial it would prune is kept when its interim value is
    within the interim score's spread of the cut it missed: ``value <= cut + spread``, the
    spread the trial's own seed-to-seed std at that checkpoint (``records.write_interim``).
    The decision reads only stored values, so a resumed study decides as the first process
    did; it is stored on the trial (``records.write_prune_cut``)."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if not super().prune(study, trial):  # type: ignore[misc]
            return False
        step = trial.last_step
        value = None if step is None else trial.intermediate_values.get(step)
        spread = None if step is None else records.interim_spreads(trial).get(step)
        cut = adapter.pruning_cut(self, study, trial)  # type: ignore[arg-type]
        if value is None or spread is None or cut is None or not math.isfinite(value):
            return True
        pruned = value > cut + spread
        records.write_prune_cut(study, trial, step, cut=cut, spread=spread, pruned=pruned)
        return pruned


class HyperbandWithinSpread(_KeepWithinSpread, optuna.pruners.HyperbandPruner):
    """Hyperband that prunes only outside the interim's spread (a subclass, so that Optuna
    still hands the samplers each trial's bracket)."""


class HalvingWithinSpread(_KeepWithinSpread, optuna.pruners.SuccessiveHalvingPruner):
    """Successive halving that prunes only outside the interim's spread."""


class MedianWithinSpread(_KeepWithinSpread, optuna.pruners.MedianPruner):
    """The median pruner, pruning only outside the interim's spread."""


def make_outer_pruner(config: Config) -> optuna.pruners.BasePruner:
    """Multi-fidelity over training images: the interim FID is reported at each training
    checkpoint (step = images trained), and Optuna's Hyperband (several successive-halving
    brackets; Li et al. 2018) or successive halving (Jamieson & Talwalkar 2016, asynchronous
    as Li et al. 2020) stops the worst at each rung, rungs from ``checkpoint_nimg`` up by a
    factor 3. A surviving trial goes on training from where it is: nothing is retrained.
    ``median`` prunes from half of ``train_nimg``. Unless ``outer.prune_within_spread``, a
    trial within the interim's spread of the cut is kept (:class:`_KeepWithinSpread`). A
    multi-objective study is not pruned (Optuna cannot prune one)."""
    train = config.train
    if config.outer.pruner == "none" or len(outer_objectives(config)) > 1:
        return optuna.pruners.NopPruner()
    plain = config.outer.prune_within_spread
    if config.outer.pruner == "median":
        median = optuna.pruners.MedianPruner if plain else MedianWithinSpread
        return median(n_startup_trials=1, n_warmup_steps=_median_warmup(train.train_nimg))
    if config.outer.pruner == "successive_halving":
        halving = optuna.pruners.SuccessiveHalvingPruner if plain else HalvingWithinSpread
        return halving(min_resource=train.checkpoint_nimg, reduction_factor=OUTER_REDUCTION_FACTOR)
    hyperband = optuna.pruners.HyperbandPruner if plain else HyperbandWithinSpread
    return hyperband(
        min_resource=train.checkpoint_nimg,
        max_resource=train.train_nimg,
        reduction_factor=OUTER_REDUCTION_FACTOR,
    )


def _median_warmup(train_nimg: int) -> int:
    return train_nimg // 2


def outer_stop_points(pruner: str, checkpoint_nimg: int, train_nimg: int) -> list[int]:
    """The training images at which :func:`make_outer_pruner`'s pruner may first stop an outer
    trial, below ``train_nimg``: the rungs ``checkpoint_nimg * 3**k`` of successive halving
    (and of Hyperband's brackets together), the median pruner's warm-up (it may stop at any
    checkpoint after), none for ``none``."""
    if pruner == "median":
        return [_median_warmup(train_nimg)]
    rungs, nimg = [], checkpoint_nimg
    if pruner in ("hyperband", "successive_halving"):
        while nimg < train_nimg:
            rungs.append(nimg)
            nimg *= OUTER_REDUCTION_FACTOR
    return rungs


def inner_pruning(config: Config) -> bool:
    """Whether inner trials are pruned (``inner.prune``, a sampler other than GP, and
    ``inner.objective = "fid"``: the paired bound of a prefix of the seeds is not reported,
    its reference being a run over all of them)."""
    return (
        bool(config.inner.prune)
        and config.inner.sampler != "gp"
        and config.inner.objective == "fid"
    )


def make_inner_pruner(config: Config) -> optuna.pruners.BasePruner:
    """Median pruning of FID at 1/4 and 1/2 of the images, after the baselines and two more.

    Not with GPSampler: it fits its Gaussian process to complete trials only, so a pruned
    point teaches it nothing and it proposes the same point again and again."""
    if not inner_pruning(config):
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2 + len(BASELINES), n_warmup_steps=0)
