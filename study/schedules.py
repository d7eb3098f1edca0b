"""The schedule computations: karras, loglinear, GITS and LD3 for one model, and the step density.

- ``karras``: Karras et al. 2022, eq. 5 (``rho``, 7 by default); no model needed;
- ``loglinear``: uniform in logSNR ``lam = -2 ln sigma``; no model needed;
- ``gits``: Chen et al. 2024, "On the trajectory regularity of ODE-based diffusion sampling"
  (``models.placement.gits``): a teacher trajectory, one-step costs, dynamic programming;
- ``ld3``: Tong et al. 2025, "Learning to discretize denoising diffusion ODEs"
  (``models.placement.ld3``): teacher matching through the sampler, started from GITS's
  schedule (whose cost is included). Measured on the 8-mode ring and a 64-D mixture (exact
  denoisers; Heun and DPM++(2M) at NFE 5, 7, 9, 15; error to a 400-step reference on 2,000
  fresh noises): started from GITS, LD3 beat karras rho=7 and GITS itself in 16 of 16 rows
  and was at least as good as LD3 started from karras in 14 (12 with the default settings);
  another start ended more than 1% lower in 5 of 16 rows (4 with the defaults), all of them
  DPM++(2M) started from loglinear (1.04x to 5.9x lower), so several starts would gain
  there, at two or three times the cost.

:func:`compute_schedule` is what the ``schedule`` command computes and what the inner studies
use for their peer baselines, so a study's GITS and LD3 are the ones that command gives (with
the study's smaller settings). :func:`density_record` and :func:`density_schedule` are a
model's tuned step density and the schedule it gives at any NFE.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from sigmatune.models.placement import (
    PLACEMENT_METHODS,
    PLACEMENTS,
    Placement,
    StepDensity,
    get_placement,
)
from sigmatune.models.samplers import DenoiserFn, steps_for_nfe
from sigmatune.models.schedules import SCHEDULES
from sigmatune.study.records import InnerRecord

METHODS = (*SCHEDULES, *PLACEMENTS)  # karras, loglinear, gits, ld3


# Every placement method's settings in every inner study and in `schedule`: the registry's
# (models.placement.PLACEMENT_METHODS, smaller than the papers'; see the comment there).
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    name: dict(method.settings) for name, method in PLACEMENT_METHODS.items()
}


# Costs of a schedule, as stored and printed (denoiser_evaluations: examples through D).
COST_KEYS = ("denoiser_evaluations", "denoiser_calls", "seconds")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown schedule method {method!r}; valid: {', '.join(METHODS)}")
    return method


def costs(placement: Placement) -> dict[str, float]:
    """A placement's costs: ``denoiser_evaluations``, ``denoiser_calls``, ``seconds``."""
    return {key: float(getattr(placement, key)) for key in COST_KEYS}


@contextlib.contextmanager
def _frozen(D: DenoiserFn) -> Iterator[None]:
    """A network's parameters without gradients inside: LD3 differentiates through D with
    respect to the step locations only (weight gradients would cost a third more)."""
    params = (
        [p for p in D.parameters() if p.requires_grad] if isinstance(D, torch.nn.Module) else []
    )
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def compute_schedule(
    method: str,
    D: DenoiserFn | None,
    shape: Sequence[int] | None,
    nfe: int,
    sampler: str = "heun",
    *,
    sigma_min: float,
    sigma_max: float,
    seed: int = 0,
    rho: float = 7.0,
    device: str | torch.device = "cpu",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    start: Placement | None = None,
) -> Placement:
    """The schedule of ``method`` (:data:`METHODS`) for ``sampler`` at ``nfe``, over
    ``[sigma_min, sigma_max]``, with its cost. ``settings[name]`` are keyword arguments of
    ``models.placement``'s method ``name`` (default: :data:`DEFAULT_SETTINGS`). A method that
    starts from another's schedule (``PlacementMethod.starts_from``: LD3 from GITS) starts
    from ``start`` when given (that method's placement, already computed), else from that
    method computed here; the start's cost is included in the method's."""
    check_method(method)
    settings = DEFAULT_SETTINGS if settings is None else settings
    t0 = time.perf_counter()
    n = steps_for_nfe(sampler, nfe)
    if method in SCHEDULES:
        kwargs = {"rho": float(rho)} if method == "karras" else {}
        sigmas = SCHEDULES[method](n, sigma_min, sigma_max, **kwargs)
        info = {"sampler": sampler, "nfe": int(nfe), "steps": n, **kwargs}
        return Placement(method, sigmas, 0, 0, time.perf_counter() - t0, info)
    if D is None or shape is None:
        raise ValueError(
            f"method {method!r} needs the model: give a checkpoint or a module:function denoiser"
        )
    common = dict(sigma_min=sigma_min, sigma_max=sigma_max, seed=seed, device=device)
    origin = PLACEMENT_METHODS[method].starts_from
    if origin is None:
        run = get_placement(method)
        return run(D, shape, nfe, sampler, **common, **settings.get(method, {}))
    if start is None:
        start = compute_schedule(
            origin, D, shape, nfe, sampler, **common, rho=rho, settings=settings
        )
    with _frozen(D):
        found = get_placement(method)(
            D, shape, nfe, sampler, **common, init=start.sigmas, **settings.get(method, {})
        )
    info = {k: v for k, v in found.info.items() if k != "loss_history"}
    info.update(start=start.method, start_costs=costs(start))
    return Placement(
        method,
        found.sigmas,
        found.denoiser_calls + start.denoiser_calls,
        found.denoiser_evaluations + start.denoiser_evaluations,
        found.seconds + start.seconds,
        info,
    )


def density_record(inner: Mapping[int, InnerRecord]) -> dict[str, Any] | None:
    """One step density over lam for every NFE, fitted to the tuned schedules of an outer
    trial's inner studies with the primary budget's sampler (``models.placement.StepDensity
    .fit``: each schedule's steps as fractions of its own lam range), with each tuned
    schedule's sigma range; as stored with the trial (``records.write_density``), or None when
    no tuned schedule has two positive sigmas. :func:`density_schedule` reads it."""
    if not inner:
        return None
    sampler = next(iter(inner.values())).tuned.sampler
    schedules = {
        nfe: record.tuned.sigmas
        for nfe, record in inner.items()
        if record.tuned.sampler == sampler and len(record.tuned.sigmas) > 2
    }
    if not schedules:
        return None
    density = StepDensity.fit(schedules)
    ranges = {str(k): list(inner[k].tuned.sigma_range) for k in sorted(schedules)}
    return {"sampler": sampler, "nfe": sorted(schedules), "ranges": ranges, **density.to_dict()}


def density_schedule(density: Mapping[str, Any], nfe: int) -> torch.Tensor:
    """The schedule at any ``nfe`` from a :func:`density_record`: the steps at the density's
    quantiles, between the ends of the tuned schedules interpolated linearly in (ln steps,
    ln sigma) between the two tuned budgets around it (the nearest tuned budget's ends beyond
    them). With one budget's steps its own ends; without ``ranges``, the density's."""

    sampler = str(density["sampler"])
    n = steps_for_nfe(sampler, nfe)
    fitted = StepDensity.from_dict(density)
    ranges = sorted(
        (steps_for_nfe(sampler, int(k)), float(lo), float(hi))
        for k, (lo, hi) in (density.get("ranges") or {}).items()
    )
    if not ranges:
        return fitted.schedule(n)
    below = [r for r in ranges if r[0] <= n] or ranges[:1]
    above = [r for r in ranges if r[0] >= n] or ranges[-1:]
    (n0, lo0, hi0), (n1, lo1, hi1) = below[-1], above[0]
    t = 0.0 if n1 == n0 else (math.log(n) - math.log(n0)) / (math.log(n1) - math.log(n0))

    def between(a: float, b: float) -> float:
        return math.exp((1 - t) * math.log(a) + t * math.log(b))

    return StepDensity(between(lo0, lo1), between(hi0, hi1), fitted.masses).schedule(n)
