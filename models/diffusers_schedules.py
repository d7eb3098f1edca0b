"""A sigmatune schedule as what each common diffusers scheduler accepts.

A schedule is VE noise levels ``sigma_max = s_0 > ... > s_{n-1} > 0`` followed by 0
(:mod:`models.schedules`). diffusers' schedulers take such a schedule in one of three ways
(verified against each ``set_timesteps`` of diffusers 0.42.1):

- ``sigmas=`` -- ``EulerDiscreteScheduler`` (VP models: the VE sigmas with the final 0;
  Karras et al.'s Euler, sigmatune's ``euler``), ``FlowMatchEulerDiscreteScheduler`` and
  ``UniPCMultistepScheduler`` with ``use_flow_sigmas`` (flow models: the ``n`` flow sigmas
  ``t = sigma/(1 + sigma)`` without the final 0, which the scheduler appends);
- ``timesteps=`` -- the network's discrete timesteps: ``DPMSolverMultistepScheduler``,
  ``DPMSolverSinglestepScheduler``, ``DDPMScheduler``, ``LCMScheduler``, ``TCDScheduler``
  (integers: each sigma goes to the training timestep nearest in ln sigma, kept strictly
  decreasing; the rounding moves the noise levels, and the relative error is reported per
  step) and ``HeunDiscreteScheduler`` (fractional timesteps, which it interpolates linearly
  in sigma: ln-sigma interpolation of the table, the timesteps sigmatune's wrapper feeds
  the network, gives sigmas within a few 1e-3 of the schedule, most at the smallest ones);
- neither -- ``DDIMScheduler``, ``EulerAncestralDiscreteScheduler``, ``LMSDiscreteScheduler``,
  ``KDPM2DiscreteScheduler``, ``PNDMScheduler``, ... : the entry names the way round.

:func:`diffusers_arguments` builds each scheduler from the model's scheduler config (with the
``config_overrides`` it lists), calls its ``set_timesteps`` with the computed argument and
reads back the noise levels the scheduler will use, so every reported error is the
scheduler's own.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sigmatune.models.diffusers_models import (
    DiffusersModelError,
    explicit_config,
    scheduler_table,
)
from sigmatune.models.schedules import validate

__all__ = [
    "FLOW_SIGMAS",
    "NEITHER_FLOW",
    "NEITHER_VP",
    "SAME_METHOD",
    "VP_SIGMAS",
    "VP_TIMESTEPS",
    "diffusers_arguments",
]

# Which scheduler takes what (diffusers 0.42.1).
VP_SIGMAS = ("EulerDiscreteScheduler",)
VP_TIMESTEPS = (
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "HeunDiscreteScheduler",
    "DDPMScheduler",
    "LCMScheduler",
    "TCDScheduler",
)
FLOW_SIGMAS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler")
# The sigmatune sampler each scheduler runs (with the config overrides listed), if any.
SAME_METHOD = {
    "EulerDiscreteScheduler": "euler",
    "FlowMatchEulerDiscreteScheduler": "euler",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
}
_NO_SIGMA_SHAPING = {
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}
NEITHER_VP = {
    "DDIMScheduler": "set_timesteps takes only num_inference_steps. Deterministic DDIM (eta=0) "
    "is Euler's method in these coordinates, so EulerDiscreteScheduler with sigmas= (from the "
    "same config) is the same sampler at the tuned noise levels",
    "EulerAncestralDiscreteScheduler": "set_timesteps takes only num_inference_steps, and it "
    "is a stochastic (ancestral) sampler; use EulerDiscreteScheduler with sigmas= for the "
    "deterministic Euler sampler",
    "LMSDiscreteScheduler": "set_timesteps takes only num_inference_steps; use "
    "EulerDiscreteScheduler (sigmas=) or DPMSolverMultistepScheduler (timesteps=)",
    "KDPM2DiscreteScheduler": "set_timesteps takes only num_inference_steps; use "
    "HeunDiscreteScheduler (timesteps=), the other second-order single-step method",
    "KDPM2AncestralDiscreteScheduler": "set_timesteps takes only num_inference_steps; use "
    "EulerDiscreteScheduler (sigmas=) or HeunDiscreteScheduler (timesteps=)",
    "PNDMScheduler": "set_timesteps takes only num_inference_steps; use "
    "DPMSolverMultistepScheduler (timesteps=), a multistep method too",
    "DEISMultistepScheduler": "set_timesteps takes only num_inference_steps (and mu); use "
    "DPMSolverMultistepScheduler (timesteps=)",
    "UniPCMultistepScheduler": "set_timesteps takes sigmas= only with use_flow_sigmas=True "
    "(flow-matching models) and no timesteps=; for this VP model use "
    "DPMSolverMultistepScheduler (timesteps=)",
}
NEITHER_FLOW = {
    "FlowMatchHeunDiscreteScheduler": "set_timesteps takes only num_inference_steps; use "
    "FlowMatchEulerDiscreteScheduler (sigmas=), or sigmatune's own heun sampler on the model",
    "DPMSolverMultistepScheduler": "with use_flow_sigmas=True set_timesteps ignores timesteps= "
    "and takes no sigmas=; use UniPCMultistepScheduler (sigmas=) or "
    "FlowMatchEulerDiscreteScheduler (sigmas=)",
}


def _relative_errors(used: Sequence[float], target: Sequence[float]) -> list[float]:
    return [abs(u - t) / t for u, t in zip(used, target)]


def _steps(values: Sequence[float], heun: bool = False) -> list[float]:
    """One value per step: Heun lists every one after the first twice (v0, v1, v1, v2, ...)."""
    return [values[0], *values[1::2]] if heun else list(values)


def _nearest_timesteps(target: Tensor, table_sigmas: Tensor) -> list[int]:
    """Training timesteps nearest in ln sigma to ``target`` (decreasing), made strictly
    decreasing (a repeat moves one timestep down), within [0, N - 1]."""
    log_table = table_sigmas.log()
    nearest = (target.log()[:, None] - log_table[None, :]).abs().argmin(dim=1).tolist()
    n, size = len(nearest), log_table.shape[0]
    if n > size:
        raise DiffusersModelError(
            f"a schedule of n={n} steps needs {n} distinct training timesteps, but the model "
            f"has {size}"
        )
    out: list[int] = []
    for i, t in enumerate(nearest):
        t = min(int(t), out[-1] - 1) if out else int(t)
        out.append(max(t, n - 1 - i))  # leave room for the steps after it
    return out


def _log_interp_timesteps(target: Tensor, table_sigmas: Tensor) -> list[float]:
    """Fractional timesteps by ln-sigma interpolation (diffusers' ``_sigma_to_t``)."""
    from sigmatune.models.diffusers_models import sigma_to_timestep

    table = {"kind": "vp", "sigmas": table_sigmas, "timestep_type": "discrete"}
    return sigma_to_timestep(target, table, "interpolate").tolist()


def _used_sigmas_vp(scheduler: Any, name: str, n: int) -> list[float]:
    """The VE noise levels a VP scheduler steps through after set_timesteps (positive ones)."""
    if name in ("DDPMScheduler", "LCMScheduler", "TCDScheduler"):  # no sigma attribute
        abar = scheduler.alphas_cumprod.to(torch.float64)[scheduler.timesteps.long()]
        return ((1 - abar) / abar).sqrt().tolist()[:n]
    heun = name == "HeunDiscreteScheduler"
    return _steps([float(v) for v in scheduler.sigmas], heun)[:n]


def _timestep_sigmas(
    scheduler: Any, table: Mapping[str, Any], n: int, heun: bool = False
) -> list[float]:
    """The VE noise levels the network is told, through the timesteps a scheduler passes it
    (the inverse of :func:`~models.diffusers_models.sigma_to_timestep`): a scheduler that
    steps with a sigma outside the table still feeds the network the table's last timestep
    (e.g. sigma_max = 80 on a table that ends at 14.6)."""
    t = torch.as_tensor(_steps([float(v) for v in scheduler.timesteps], heun), dtype=torch.float64)
    t = t[:n]
    if table["kind"] == "flow":
        flow = t / table["num_train_timesteps"]
        return (flow / (1 - flow)).tolist()
    if table["timestep_type"] == "continuous":
        return (4 * t).exp().tolist()
    log_table = table["sigmas"].log().numpy()
    return np.exp(np.interp(t.numpy(), np.arange(len(log_table)), log_table)).tolist()


def _entry(
    argument: str,
    values: list,
    used: Sequence[list[float]],
    target: list[float],
    note: str,
    *,
    name: str,
    config_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``used``: the noise levels the scheduler steps with, and those its timesteps tell the
    network; the error of a step is the worse of the two."""
    if any(len(u) != len(target) for u in used):
        raise DiffusersModelError(
            f"{name}.set_timesteps({argument}=...) made {[len(u) for u in used]} steps of the "
            f"{len(target)} exported; this diffusers version treats {argument}= otherwise"
        )
    errors = [max(e) for e in zip(*(_relative_errors(u, target) for u in used))]
    return {
        "argument": argument,
        "values": values,
        "config_overrides": dict(config_overrides or {}),
        "relative_sigma_errors": errors,
        "max_relative_sigma_error": max(errors) if errors else 0.0,
        "same_method_as": SAME_METHOD.get(name),
        "note": note,
    }


def _known(cls: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that ``cls`` has as config keys (the rest it would ignore, with a
    warning)."""
    import inspect

    return {k: v for k, v in overrides.items() if k in inspect.signature(cls.__init__).parameters}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """diffusers' warnings off: a config of another scheduler class has keys this one ignores
    (the warning says so), and LCM/TCD warn about timesteps off their distillation grid (the
    entry's note says so)."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _build(cls: Any, config: Mapping[str, Any], overrides: Mapping[str, Any]) -> Any:
    with _quiet():
        return cls.from_config({**dict(config), **_known(cls, overrides)})


def _vp_entries(s: Tensor, config: Mapping[str, Any], table: Mapping[str, Any]) -> dict:
    import diffusers

    positive = s[:-1]
    n = positive.numel()
    target = positive.tolist()
    out: dict[str, dict[str, Any]] = {}
    # sigmas=
    sched = _build(diffusers.EulerDiscreteScheduler, config, _NO_SIGMA_SHAPING)
    sched.set_timesteps(sigmas=s.tolist())
    out["EulerDiscreteScheduler"] = _entry(
        "sigmas",
        s.tolist(),
        [_used_sigmas_vp(sched, "EulerDiscreteScheduler", n), _timestep_sigmas(sched, table, n)],
        target,
        "the VE sigmas with the final 0: set_timesteps(sigmas=values); the scheduler finds "
        "each sigma's fractional timestep as sigmatune does, so it runs the schedule as tuned "
        "(error: float32 rounding). Start from latents = sigmas[0] * randn (init_noise_sigma "
        "is sqrt(sigmas[0]**2 + 1) with timestep_spacing='leading')",
        name="EulerDiscreteScheduler",
        config_overrides=_known(diffusers.EulerDiscreteScheduler, _NO_SIGMA_SHAPING),
    )
    # timesteps=
    integers = _nearest_timesteps(positive, table["sigmas"])
    fractional = _log_interp_timesteps(positive, table["sigmas"])
    s0 = target[0]
    vp_start = (
        f". Its state is the VP sample x/sqrt(1 + sigma^2): start from latents = "
        f"{s0 / math.sqrt(1 + s0 * s0):.6g} * randn (= sigmas[0]/sqrt(1 + sigmas[0]^2) * randn; "
        "its init_noise_sigma is 1)"
    )
    notes = {
        "DPMSolverMultistepScheduler": "integer training timesteps nearest in ln sigma; with "
        "algorithm_type='dpmsolver++', solver_order=2 and final_sigmas_type='zero' it is "
        "sigmatune's dpmpp_2m on the rounded sigmas" + vp_start,
        "DPMSolverSinglestepScheduler": "integer training timesteps nearest in ln sigma; a "
        "single-step DPM-Solver (another method than the one tuned)" + vp_start,
        "HeunDiscreteScheduler": "fractional timesteps (ln-sigma interpolation of the table, "
        "the timesteps sigmatune's wrapper gives the network); Heun interpolates them "
        "linearly in sigma, hence the small error. It is sigmatune's heun (2n - 1 NFE); "
        "like Euler it steps the VE sample: start from latents = sigmas[0] * randn",
        "DDPMScheduler": "integer training timesteps nearest in ln sigma; DDPM is ancestral "
        "(stochastic) sampling, another method than the one tuned" + vp_start,
        "LCMScheduler": "integer training timesteps nearest in ln sigma; for latent "
        "consistency models (LCM warns when a timestep is off its distillation grid)" + vp_start,
        "TCDScheduler": "integer training timesteps nearest in ln sigma; for trajectory "
        "consistency distilled models (TCD warns when a timestep is off its grid)" + vp_start,
    }
    overrides = {**_NO_SIGMA_SHAPING, "use_lu_lambdas": False, "final_sigmas_type": "zero"}
    for name in VP_TIMESTEPS:
        values: list = fractional if name == "HeunDiscreteScheduler" else integers
        cls = getattr(diffusers, name)
        sched = _build(cls, config, overrides)
        with _quiet():
            sched.set_timesteps(timesteps=values)
        out[name] = _entry(
            "timesteps",
            values,
            [
                _used_sigmas_vp(sched, name, n),
                _timestep_sigmas(sched, table, n, name == "HeunDiscreteScheduler"),
            ],
            target,
            notes[name],
            name=name,
            config_overrides=_known(cls, overrides),
        )
    for name, way in NEITHER_VP.items():
        out[name] = _neither(name, way)
    return out


def _neither(name: str, way: str) -> dict[str, Any]:
    return {
        "argument": None,
        "values": None,
        "config_overrides": {},
        "relative_sigma_errors": None,
        "max_relative_sigma_error": None,
        "same_method_as": None,
        "note": f"{name} takes neither sigmas= nor timesteps=: {way}",
    }


def _flow_entries(s: Tensor, config: Mapping[str, Any], table: Mapping[str, Any]) -> dict:
    import diffusers

    positive = s[:-1]
    target = positive.tolist()
    flow = (positive / (1 + positive)).tolist()  # t = sigma / (1 + sigma), without the final 0
    start = (
        f"Start from latents = {flow[0]:.6g} * randn (= sigmas[0] * randn): the schedule "
        "begins at t = values[0] < 1, where pure unit noise would be off by a factor"
    )
    out: dict[str, dict[str, Any]] = {}
    specs: dict[str, tuple[dict[str, Any], str]] = {
        "FlowMatchEulerDiscreteScheduler": (
            {**_NO_SIGMA_SHAPING, "shift": 1.0, "use_dynamic_shifting": False},
            "flow sigmas t = sigma/(1 + sigma), without the final 0 (the scheduler appends "
            "it), with the shift turned off so that they are used as given; it is sigmatune's "
            "euler (Euler's method is the same in flow and VE coordinates). " + start,
        ),
        "UniPCMultistepScheduler": (
            {
                **_NO_SIGMA_SHAPING,
                "use_flow_sigmas": True,
                "prediction_type": "flow_prediction",
                "flow_shift": 1.0,
                "use_dynamic_shifting": False,
                "final_sigmas_type": "zero",
            },
            "flow sigmas t = sigma/(1 + sigma), without the final 0, with use_flow_sigmas and "
            "no shift, passed as a numpy array: set_timesteps(sigmas=np.array(values)) (UniPC "
            "fails on a list); UniPC is another solver than the one tuned, and it hands the "
            "network the timesteps int(t * num_train_timesteps), truncated: the error reported "
            "is theirs. " + start,
        ),
    }
    for name, (overrides, note) in specs.items():
        cls = getattr(diffusers, name)
        sched = _build(cls, config, overrides)
        sched.set_timesteps(sigmas=np.asarray(flow))  # (UniPC fails on a list)
        t_used = [float(v) for v in sched.sigmas if 0 < float(v)][: len(flow)]
        used = [t / (1 - t) for t in t_used]
        out[name] = _entry(
            "sigmas",
            flow,
            [used, _timestep_sigmas(sched, table, len(flow))],
            target,
            note,
            name=name,
            config_overrides=_known(cls, overrides),
        )
    for name, way in NEITHER_FLOW.items():
        out[name] = _neither(name, way)
    return out


def diffusers_arguments(
    sigmas: Tensor | Sequence[float],
    scheduler_config: Mapping[str, Any],
    *,
    check_range: Callable[[Tensor], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """What each common diffusers scheduler accepts for the schedule ``sigmas`` (VE,
    decreasing, last 0) of a model with this ``scheduler_config`` (its
    ``scheduler_config.json``, e.g. ``DiffusersDenoiser.scheduler_config``).

    Returns a JSON-able dict keyed by scheduler class name, each entry:

    - ``argument``: ``"sigmas"``, ``"timesteps"`` or None (takes neither);
    - ``values``: the list to pass as that argument;
    - ``config_overrides``: keys to pass to ``Scheduler.from_config(config, **overrides)``
      so that the values are used as given (e.g. ``use_karras_sigmas=False``);
    - ``relative_sigma_errors``: per step, |sigma used - sigma tuned| / sigma tuned, as read
      back from the scheduler after ``set_timesteps``; ``max_relative_sigma_error``;
    - ``same_method_as``: the sigmatune sampler the scheduler runs (``euler``, ``heun``,
      ``dpmpp_2m``) or None;
    - ``note``: how to call it, and for schedulers that take neither, the way round.

    VP models get the Euler, DPM-Solver, Heun, DDPM, LCM and TCD entries; flow-matching
    models the FlowMatchEuler and UniPC (flow) entries. ``check_range`` (e.g. the model's
    ``check_sigma_range``) may refuse the schedule first."""
    s = validate(sigmas)
    if check_range is not None:
        check_range(s)
    scheduler_config = explicit_config(scheduler_config)
    table = scheduler_table(scheduler_config)
    if table["kind"] == "flow":
        return _flow_entries(s, scheduler_config, table)
    return _vp_entries(s, scheduler_config, table)
