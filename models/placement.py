"""Published step-placement methods, as pure functions of a denoiser, and a step density for
any NFE.

- :func:`gits` — Chen et al. 2024, "On the trajectory regularity of ODE-based diffusion
  sampling" (GITS): a teacher trajectory on a fine grid, a cost matrix of one-step errors
  between grid points, and dynamic programming over it.
- :func:`ld3` — Tong et al. 2025, "Learning to discretize denoising diffusion ODEs" (LD3):
  gradient descent on the step locations through the sampler, so that its output matches the
  teacher's from the same noise.
- :class:`StepDensity` — one density over logSNR ``lam = -2 ln sigma`` fitted to schedules
  tuned at several NFE, whose quantiles give a schedule for any number of steps.

Both methods return a :class:`Placement`: the schedule (validated, float64, ending in 0) with
what it cost in denoiser calls and seconds. They use the deterministic samplers (no churn).
The teacher of both is Heun (Karras et al. 2022, Algorithm 2) on ``karras(teacher_steps,
sigma_min, sigma_max, rho=7)``: EDM's grid for Heun, whose 100 steps end within 5e-4 (the
8-mode ring) and 3e-3 (a 64-D mixture) of the exact flow, far below the errors being compared;
its ends are the schedule's ends, so every placement is compared with karras rho=7 on the same
range. As GITS's candidate grid, a loglinear one of the same size picked schedules within a
grid step of it on the ring.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from sigmatune.models.samplers import (
    euler_step,
    get_sampler,
    heun_step,
    steps_for_nfe,
)
from sigmatune.models.schedules import karras, to_gaps, validate
from sigmatune.objectives.densities import Piecewise, lam_range

__all__ = [
    "COST_STEPS",
    "DEFAULT_COST_STEP",
    "PLACEMENTS",
    "Placement",
    "StepDensity",
    "get_placement",
    "gits",
    "ld3",
    "least_cost_path",
]

DenoiserFn = Callable[[Tensor, Tensor], Tensor]

TEACHER_RHO = 7.0  # the teacher's grid: karras rho = 7 (EDM's choice for Heun)

# One step from a teacher state x_i to sigma_j, for GITS's cost matrix. "euler" is GITS's own
# (the teacher's D(x_i) is reused, so it costs no call; in sigma it is also DPM-Solver++'s
# first-order step, DDIM); "heun" is the step a Heun sampler takes (one call per pair). The
# step into sigma = 0 is D(x_i) for both, as in the samplers.
COST_STEPS: dict[str, Callable[..., Tensor]] = {"euler": euler_step, "heun": heun_step}
# The default cost step of each sampler, chosen by held-out error on the analytic 8-mode ring
# and a 64-D mixture at NFE 5, 7, 9: the sampler's own step for heun (1.5-13x lower error than
# with the Euler cost) and euler (1.2-3.5x lower than with the Heun cost, ring). For dpmpp_2m, a
# multistep method, neither is its step and neither won consistently: GITS's own, the cheaper.
DEFAULT_COST_STEP: dict[str, str] = {"euler": "euler", "heun": "heun", "dpmpp_2m": "euler"}


@dataclass(frozen=True, eq=False)
class Placement:
    """A schedule from a step-placement method and what it cost.

    ``denoiser_calls`` counts calls of D (batched); ``denoiser_evaluations`` the examples
    passed through D in all (the sum of the calls' batch sizes), which does not depend on the
    batch size. ``seconds`` is the wall time of the whole method.
    """

    method: str
    sigmas: Tensor  # [n + 1], float64, validated
    denoiser_calls: int
    denoiser_evaluations: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", validate(self.sigmas))


class _Counted:
    """A denoiser that counts its calls and the examples it is given."""

    def __init__(self, D: DenoiserFn) -> None:
        self.D, self.calls, self.evaluations = D, 0, 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        self.evaluations += x.shape[0]
        return self.D(x, sigma)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, but got {name}={value!r}")
    return int(value)


def _noise(
    shape: Sequence[int], num: int, seed: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``num`` standard normal draws [num, *shape] from one CPU generator seeded by ``seed``
    (drawn in float64 on the CPU, so the same on every device)."""
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn((num, *shape), generator=g, dtype=torch.float64)
    return eps.to(device=device, dtype=dtype)


def _sigma(x: Tensor, value: float) -> Tensor:
    return x.new_full((x.shape[0],), value)  # [B], x's dtype


def _chunks(num: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, num)) for start in range(0, num, batch_size)]


def _info(
    sampler: str, nfe: int, n: int, teacher_steps: int, num_noises: int, seed: int, **more: Any
) -> dict[str, Any]:
    """What a method was run with, for :attr:`Placement.info`."""
    return {
        "sampler": sampler,
        "nfe": int(nfe),
        "steps": n,
        "teacher": f"heun on karras(teacher_steps, rho={TEACHER_RHO:g})",
        "teacher_steps": teacher_steps,
        "num_noises": num_noises,
        "seed": int(seed),
        **more,
    }


def _teacher(D: DenoiserFn, x: Tensor, grid: list[float]) -> tuple[list[Tensor], list[Tensor]]:
    """Heun on ``grid`` from x: the states x_i at every grid sigma (the last at 0) and the
    denoised D(x_i, sigma_i) at every positive one. 2G - 1 calls for G positive sigmas."""
    states, denoised = [x], []
    for i in range(len(grid) - 1):
        den = D(x, _sigma(x, grid[i]))
        x = heun_step(D, x, grid[i], grid[i + 1], denoised=den)
        states.append(x)
        denoised.append(den)
    return states, denoised


# -- GITS ------------------------------------------------------------------------------------


def least_cost_path(cost: Tensor, n_edges: int) -> list[int]:
    """The path 0 = p_0 < p_1 < ... < p_{n_edges} = G - 1 through a [G, G] cost matrix (only
    ``cost[i, j]`` with i < j is read) with the least summed cost: GITS's dynamic programming
    (Chen et al. 2024, Sec. 4.2). O(n_edges G^2); ties go to the smallest index."""
    C = torch.as_tensor(cost, dtype=torch.float64).detach().cpu().numpy()
    G = C.shape[0]
    if C.ndim != 2 or C.shape[1] != G:
        raise ValueError(f"cost must be a square matrix, but got shape={C.shape}")
    n_edges = _check_int("n_edges", n_edges, 1)
    if n_edges > G - 1:
        raise ValueError(f"n_edges must be <= G - 1 = {G - 1}, but got n_edges={n_edges}")
    C = np.where(np.triu(np.ones((G, G), dtype=bool), k=1), C, np.inf)  # edges i -> j > i only
    V = np.full(G, np.inf)  # V[j]: least cost of reaching j from 0 in k edges
    V[0] = 0.0
    back = np.zeros((n_edges + 1, G), dtype=np.int64)
    for k in range(1, n_edges + 1):
        total = V[:, None] + C  # [i, j]
        back[k] = np.argmin(total, axis=0)
        V = total[back[k], np.arange(G)]
    path = [G - 1]
    for k in range(n_edges, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1]


def gits(
    D: DenoiserFn,
    shape: Sequence[int],
    nfe: int,
    sampler: str | Callable[..., Tensor] = "heun",
    *,
    sigma_min: float,
    sigma_max: float,
    seed: int = 0,
    num_noises: int = 256,
    teacher_steps: int = 100,
    cost_step: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Placement:
    """GITS (Chen et al. 2024, Sec. 4.2): the ``n = steps_for_nfe(sampler, nfe)`` steps, chosen
    among the teacher's grid, whose one-step errors against the teacher sum to the least.

    The teacher (Heun on ``karras(teacher_steps, sigma_min, sigma_max, rho=7)``) runs from
    ``num_noises`` noises ``sigma_max * eps`` (one generator seeded by ``seed``). The cost
    ``C[i, j]`` (i < j) is the mean over noises of ``||step(x_i, sigma_i -> sigma_j) - x_j||_2``,
    ``step`` one ``cost_step`` step (:data:`COST_STEPS`; by default the sampler's own,
    :data:`DEFAULT_COST_STEP`) from the teacher's state x_i. The schedule runs through grid
    points from ``sigma_max`` to ``sigma_min`` (n positive sigmas, the ends fixed) and then to
    0; its last step, ``sigma_min -> 0``, is the samplers' denoising step and costs every
    candidate the same, so it is left out of the sum.

    Calls: the teacher's ``2 teacher_steps - 1`` per batch of noises, plus, for
    ``cost_step="heun"``, one per pair of positive grid points.
    """
    start = time.perf_counter()
    name = _sampler_name(sampler)
    n = steps_for_nfe(sampler, nfe)
    num_noises = _check_int("num_noises", num_noises, 1)
    teacher_steps = _check_int("teacher_steps", teacher_steps, 2)
    batch_size = _check_int("batch_size", batch_size, 1)
    if cost_step is None:
        cost_step = DEFAULT_COST_STEP.get(name, "euler")
    if cost_step not in COST_STEPS:
        raise ValueError(f"unknown cost_step {cost_step!r}; valid: {', '.join(sorted(COST_STEPS))}")
    if n > teacher_steps:
        raise ValueError(
            f"teacher_steps must be >= the {n} steps of {name} at nfe={nfe}, "
            f"but got teacher_steps={teacher_steps}"
        )
    grid_t = karras(teacher_steps, sigma_min, sigma_max, rho=TEACHER_RHO)
    info = _info(name, nfe, n, teacher_steps, num_noises, seed, cost_step=cost_step)
    G = teacher_steps  # positive grid points; grid[G] = 0
    if n <= 2:  # [sigma_max, 0] or [sigma_max, sigma_min, 0]: nothing to choose
        indices = [0, G - 1][:n]
        sigmas = torch.cat([grid_t[indices], grid_t.new_zeros(1)])
        info.update(indices=indices, path_cost=0.0)
        return Placement("gits", sigmas, 0, 0, time.perf_counter() - start, info)

    counted = _Counted(D)
    step = COST_STEPS[cost_step]
    grid = grid_t.tolist()
    device = torch.device(device)
    cost = torch.zeros(G, G, dtype=torch.float64)
    eps = _noise(shape, num_noises, seed, device, dtype)
    with torch.no_grad():
        for chunk in _chunks(num_noises, batch_size):
            states, denoised = _teacher(counted, sigma_max * eps[chunk], grid)
            for i in range(G - 1):
                row = [
                    (step(counted, states[i], grid[i], grid[j], denoised=denoised[i]) - states[j])
                    .flatten(1)
                    .double()
                    .norm(dim=1)
                    .sum()
                    for j in range(i + 1, G)
                ]  # summed over the batch, one per j > i
                cost[i, i + 1 :] += torch.stack(row).cpu()
    cost /= num_noises
    indices = least_cost_path(cost, n - 1)
    sigmas = torch.cat([grid_t[indices], grid_t.new_zeros(1)])
    path_cost = sum(float(cost[a, b]) for a, b in itertools.pairwise(indices))
    info.update(indices=indices, path_cost=path_cost)
    return Placement(
        "gits",
        sigmas,
        counted.calls,
        counted.evaluations,
        time.perf_counter() - start,
        info,
    )


# -- LD3 -------------------------------------------------------------------------------------


def _schedule_from_logits(theta: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    """The schedule whose n - 1 gaps in lam are softmax(theta) of lam_max - lam_min, the ends
    exactly sigma_max and sigma_min, then 0; differentiable in theta (float64)."""
    lam_min, lam_max = lam_range(sigma_min, sigma_max)
    fractions = torch.softmax(theta, dim=0).cumsum(0)[:-1]  # interior points, [n - 2]
    inner = torch.exp(-(lam_min + (lam_max - lam_min) * fractions) / 2)
    ends = theta.new_tensor([sigma_max, sigma_min, 0.0])
    return torch.cat([ends[:1], inner, ends[1:]])


def ld3(
    D: DenoiserFn,
    shape: Sequence[int],
    nfe: int,
    sampler: str | Callable[..., Tensor] = "heun",
    *,
    sigma_min: float,
    sigma_max: float,
    seed: int = 0,
    num_noises: int = 100,
    teacher_steps: int = 100,
    iterations: int = 100,
    lr: float = 0.05,
    init: Tensor | Sequence[float] | None = None,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Placement:
    """LD3 (Tong et al. 2025), teacher matching: the step locations that minimise the mean
    squared error between the sampler's output and the teacher's from the same noise.

    The ``n = steps_for_nfe(sampler, nfe)`` positive sigmas are parameterised by the n - 1
    gaps in lam between the fixed ends ``sigma_max`` and ``sigma_min``, as softmax(theta)
    fractions (so every iterate is a valid schedule), theta initialised from ``init`` (default
    ``karras(n, sigma_min, sigma_max, rho=7)``; e.g. GITS's schedule). Adam with ``lr`` runs
    ``iterations`` full-batch steps on ``num_noises`` noises (one generator seeded by
    ``seed``; gradients accumulated over batches of ``batch_size``), differentiating through
    the sampler and the denoiser. The teacher is Heun on ``karras(teacher_steps, rho=7)``.
    The schedule returned is the iterate with the least training loss (``init`` included).
    This is the plain ("hard") objective of LD3, without its relaxed input ball.

    ``denoiser_calls`` counts the forward calls; each call during training is also
    differentiated (``info["backward_calls"]``).
    """
    start = time.perf_counter()
    name = _sampler_name(sampler)
    fn = get_sampler(sampler)
    n = steps_for_nfe(sampler, nfe)
    num_noises = _check_int("num_noises", num_noises, 1)
    teacher_steps = _check_int("teacher_steps", teacher_steps, 1)
    iterations = _check_int("iterations", iterations, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0 and finite, but got lr={lr!r}")
    if init is None:
        init_s = karras(n, sigma_min, sigma_max, rho=TEACHER_RHO)
    else:
        init_s = validate(init)
        if init_s.numel() != n + 1:
            raise ValueError(
                f"init must have the {n} steps of {name} at nfe={nfe} ({n + 1} values), "
                f"but got init={init_s.tolist()}"
            )
        ends = (init_s[0].item(), init_s[-2].item())
        if n > 1 and not (
            math.isclose(ends[0], sigma_max, rel_tol=1e-9)
            and math.isclose(ends[1], sigma_min, rel_tol=1e-9)
        ):
            raise ValueError(
                f"init must run from sigma_max={sigma_max} to sigma_min={sigma_min}, "
                f"but got init={init_s.tolist()}"
            )
    info = _info(name, nfe, n, teacher_steps, num_noises, seed, iterations=iterations, lr=lr)
    info.update(init=init_s.tolist(), backward_calls=0)
    if n <= 2:  # no free step location
        sigmas = karras(n, sigma_min, sigma_max) if init is None else init_s
        return Placement("ld3", sigmas, 0, 0, time.perf_counter() - start, info)

    counted = _Counted(D)
    device = torch.device(device)
    x_T = sigma_max * _noise(shape, num_noises, seed, device, dtype)
    chunks = _chunks(num_noises, batch_size)
    teacher_grid = karras(teacher_steps, sigma_min, sigma_max, rho=TEACHER_RHO)
    with torch.no_grad():
        target = torch.cat([get_sampler("heun")(counted, x_T[c], teacher_grid) for c in chunks])

    def loss(sigmas: Tensor, backward: bool) -> float:
        """Mean over noises of the per-coordinate MSE to the teacher; its gradient
        accumulated into theta when ``backward``."""
        total = 0.0
        for c in chunks:
            with torch.set_grad_enabled(backward):
                out = fn(counted, x_T[c], sigmas)
                err = (out - target[c]).double().pow(2).flatten(1).mean(1).sum() / num_noises
                if backward:
                    err.backward(retain_graph=len(chunks) > 1)
            total += err.item()
        return total

    theta = to_gaps(init_s).log().requires_grad_(True)
    optimiser = torch.optim.Adam([theta], lr=float(lr))
    history: list[float] = []
    best_loss, best = math.inf, init_s
    for _ in range(iterations):
        optimiser.zero_grad()
        sigmas = _schedule_from_logits(theta, sigma_min, sigma_max)
        before = counted.calls
        value = loss(sigmas, backward=True)
        info["backward_calls"] += counted.calls - before
        history.append(value)
        if value < best_loss:
            best_loss, best = value, sigmas.detach().clone()
        optimiser.step()
    with torch.no_grad():
        last = _schedule_from_logits(theta, sigma_min, sigma_max)
        value = loss(last, backward=False)
    history.append(value)
    if value < best_loss:
        best_loss, best = value, last
    info.update(loss_history=history, init_loss=history[0], best_loss=best_loss)
    return Placement(
        "ld3",
        best,
        counted.calls,
        counted.evaluations,
        time.perf_counter() - start,
        info,
    )


# -- registry --------------------------------------------------------------------------------

# A teacher grid of this many points for every method that chooses its steps among one, in
# every inner study and in `sigmatune schedule` (the papers use 100 or more; see below).
TEACHER_STEPS = 32


@dataclass(frozen=True)
class PlacementMethod:
    """One registered step-placement method: everything the study derives from it.

    ``compute`` is ``(D, shape, nfe, sampler, *, sigma_min, sigma_max, seed, device,
    **settings) -> Placement``; ``settings`` are its keyword arguments in every inner study and
    in ``sigmatune schedule`` (whose ``--num-noises``, ``--teacher-steps`` and ``--iterations``
    reach every method with that key); ``starts_from`` names the method whose schedule it
    refines (passed as ``init=``, that method's cost included in this one's); ``teacher_grid``
    says it chooses among a grid of ``settings["teacher_steps"]`` points, which bounds the NFE
    budgets a config may ask for.
    """

    compute: Callable[..., Placement]
    settings: dict[str, Any] = field(default_factory=dict)
    starts_from: str | None = None
    teacher_grid: bool = False


# GITS's and LD3's settings, smaller than their papers' (GITS: 256 noises on a 100-step grid;
# LD3: 100 noises, 100 iterations), as an inner study computes them for every model and NFE.
# GITS with Heun's cost step makes one call per pair of grid points: on the digits U-Net (one
# CPU thread) 64 noises on a 32-step grid took 37 s, 16 take a quarter of that and chose the
# same grid points, or points one grid step away, on the exact ring and a 64-D mixture (Heun,
# DPM++(2M), NFE 5-15). Measured on those mixtures (error to a 400-step reference on 2,000 fresh
# noises), LD3 started from GITS ends within 14% of its error with the papers' settings with
# Heun and with DPM++(2M) on the 64-D mixture, but 6-26x above it with DPM++(2M) on the ring at
# NFE 7-15 (errors below 6e-4, where the 32-step teacher's own error shows).
PLACEMENT_METHODS: dict[str, PlacementMethod] = {
    "gits": PlacementMethod(
        gits, {"num_noises": 16, "teacher_steps": TEACHER_STEPS}, teacher_grid=True
    ),
    "ld3": PlacementMethod(
        ld3,
        {"num_noises": 32, "teacher_steps": TEACHER_STEPS, "iterations": 30},
        starts_from="gits",
        teacher_grid=True,
    ),
}
PLACEMENTS: dict[str, Callable[..., Placement]] = {
    name: method.compute for name, method in PLACEMENT_METHODS.items()
}


def get_placement(name: str) -> Callable[..., Placement]:
    """The step-placement method registered as ``name`` in :data:`PLACEMENTS`."""
    if name not in PLACEMENTS:
        raise ValueError(f"unknown placement {name!r}; valid: {', '.join(sorted(PLACEMENTS))}")
    return PLACEMENTS[name]


def _sampler_name(sampler: str | Callable[..., Tensor]) -> str:
    fn = get_sampler(sampler)
    return sampler if isinstance(sampler, str) else getattr(fn, "__name__", repr(fn))


# -- one step density for any NFE ------------------------------------------------------------


def _mean_in_lam(sigmas: list[float]) -> float:
    """The sigma at the mean lam of ``sigmas`` (their geometric mean); exactly theirs when all
    are equal."""
    if all(s == sigmas[0] for s in sigmas):
        return sigmas[0]
    return math.exp(float(np.mean(np.log(sigmas))))


@dataclass(frozen=True)
class StepDensity:
    """A density of step locations over lam on ``[lam_min, lam_max]``, piecewise constant on
    ``len(masses)`` equal bins (a piecewise-linear CDF, :class:`objectives.densities.Piecewise`):
    the n positive sigmas of a schedule are its quantiles at i / (n - 1), i = 0..n-1, so the
    ends are exactly ``sigma_max`` and ``sigma_min``, and then 0.
    """

    sigma_min: float
    sigma_max: float
    masses: tuple[float, ...]

    def __post_init__(self) -> None:
        masses = tuple(float(m) for m in self.masses)
        if not masses or not all(math.isfinite(m) and m > 0 for m in masses):
            raise ValueError(f"masses must be > 0 and finite, but got masses={list(masses)}")
        total = sum(masses)
        object.__setattr__(self, "masses", tuple(m / total for m in masses))
        object.__setattr__(
            self,
            "_density",
            Piecewise(self.masses, sigma_min=self.sigma_min, sigma_max=self.sigma_max),
        )

    @property
    def lam_min(self) -> float:
        """-2 ln sigma_max."""
        return self._density.lam_min

    @property
    def lam_max(self) -> float:
        """-2 ln sigma_min."""
        return self._density.lam_max

    @classmethod
    def fit(
        cls,
        schedules: Mapping[int, Sequence[float] | Tensor],
        *,
        bins: int = 16,
        smoothing: float = 1e-4,
        floor: float = 1e-3,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ) -> StepDensity:
        """Least-squares fit of the piecewise-linear CDF to the schedules' empirical step CDFs.

        A schedule with n positive sigmas gives the points (u_i, i / (n - 1)), u_i its lam_i as
        a fraction of its own range [lam_0, lam_{n-1}], so schedules of different sigma ranges
        share one shape; the density's range is the mean of theirs in lam (or ``sigma_min`` /
        ``sigma_max`` when given). The bin masses m minimise
        ``sum (F(u_i) - i/(n-1))^2 + smoothing * sum_k (f_{k+1} - f_k)^2`` (f = bins * m the
        density per unit fraction; the penalty makes it well posed with few points, and with
        none the fit is uniform in lam, i.e. loglinear), subject to m >= floor / bins and
        sum m = 1, so the CDF is strictly increasing. Keys (the NFE) are recorded only.
        """
        bins = _check_int("bins", bins, 1)
        if not (math.isfinite(smoothing) and smoothing > 0):
            raise ValueError(f"smoothing must be > 0 and finite, but got smoothing={smoothing}")
        if not (math.isfinite(floor) and 0 < floor < 1):
            raise ValueError(f"floor must be in (0, 1), but got floor={floor}")
        u_points: list[float] = []
        p_points: list[float] = []
        tops: list[float] = []  # each schedule's sigma_max
        bottoms: list[float] = []  # and sigma_min
        for sigmas in schedules.values():
            s = validate(sigmas)[:-1]
            if s.numel() < 2:
                continue
            lam = -2 * s.log()
            tops.append(s[0].item())
            bottoms.append(s[-1].item())
            u = (lam - lam[0]) / (lam[-1] - lam[0])
            m = s.numel()
            u_points += u[1:-1].tolist()
            p_points += [i / (m - 1) for i in range(1, m - 1)]
        if sigma_max is None or sigma_min is None:
            if not tops:
                raise ValueError(
                    "schedules must include one with at least 2 positive sigmas (or give "
                    f"sigma_min and sigma_max), but got schedules={dict(schedules)}"
                )
        sigma_max = _mean_in_lam(tops) if sigma_max is None else float(sigma_max)
        sigma_min = _mean_in_lam(bottoms) if sigma_min is None else float(sigma_min)
        # F(u) = sum_k m_k clip(bins u - k, 0, 1); m = lo + (1 - bins lo) w, w >= 0, sum w = 1.
        u = np.asarray(u_points, dtype=np.float64)
        p = np.asarray(p_points, dtype=np.float64)
        A = np.clip(bins * u[:, None] - np.arange(bins)[None, :], 0.0, 1.0)  # [points, bins]
        L = bins * (np.eye(bins, k=1) - np.eye(bins))[:-1]  # density differences, [bins-1, bins]
        lo = floor / bins
        scale = 1 - bins * lo
        rows = np.vstack([A * scale, math.sqrt(smoothing) * L * scale])
        rhs = np.concatenate([p - A.sum(1) * lo, -math.sqrt(smoothing) * (L.sum(1) * lo)])
        big = 1e4 * (1 + np.abs(rows).max(initial=1.0))  # sum w = 1, weighted in
        rows = np.vstack([rows, big * np.ones((1, bins))])
        rhs = np.concatenate([rhs, [big]])
        w, _ = nnls(rows, rhs, maxiter=50 * bins)
        w = w / w.sum()
        return cls(sigma_min, sigma_max, tuple((lo + scale * w).tolist()))

    def cdf(self, lam: Tensor | float) -> Tensor:
        """The step CDF over lam (0 below lam_min, 1 above lam_max), float64."""
        return self._density.cdf(torch.as_tensor(lam, dtype=torch.float64))

    def pdf(self, lam: Tensor | float) -> Tensor:
        """The step density per unit lam (0 outside [lam_min, lam_max]), float64."""
        return self._density.log_prob(torch.as_tensor(lam, dtype=torch.float64)).exp()

    def schedule(self, n_steps: int) -> Tensor:
        """The n_steps positive sigmas at the quantiles i / (n_steps - 1), then 0."""
        n = _check_int("n_steps", n_steps, 1)
        if n == 1:
            return validate([self.sigma_max, 0.0])
        lam = self._density.icdf(torch.linspace(0, 1, n, dtype=torch.float64))
        positive = torch.exp(-lam / 2)
        positive[0], positive[-1] = self.sigma_max, self.sigma_min
        return validate(torch.cat([positive, positive.new_zeros(1)]))

    def for_nfe(self, sampler: str | Callable[..., Tensor], nfe: int) -> Tensor:
        """The schedule with the most steps that ``sampler`` runs within ``nfe``."""
        return self.schedule(steps_for_nfe(sampler, nfe))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"sigma_min", "sigma_max", "masses"}``."""
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "masses": list(self.masses),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepDensity:
        """The inverse of :meth:`to_dict`."""
        missing = sorted({"sigma_min", "sigma_max", "masses"} - set(data))
        if missing:
            raise ValueError(f"data must have the key {missing[0]!r}, but got keys={sorted(data)}")
        return cls(float(data["sigma_min"]), float(data["sigma_max"]), tuple(data["masses"]))
