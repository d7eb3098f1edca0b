"""Mechanisms that adapt the training objective while it trains (Dieleman 2024, §5).

All three plug into :class:`objectives.loss.DiffusionObjective` through the same hooks:
``sample`` draws the noise levels (and a factor that multiplies the weight), ``transform`` maps
the weighted error to the per-example loss, ``observe`` sees the detached loss after each step,
and ``effective_factor`` says how the mechanism changes the effective weighting
``W(λ) = p_λ(λ)·w(σ)·σ²/c_out(σ)²`` (Kingma & Gao 2023, App. F).

- :class:`Importance` — Kingma & Gao 2023, App. F: an EMA of the loss per λ-bin gives a
  proposal ``q`` with bin masses ``∝ EMA·(p-mass of the bin)``, mixed with ``p``; σ is drawn
  from ``q`` and the weight is multiplied by ``p/q``, so ``W`` is unchanged and only the variance
  of the loss estimate drops.
- :class:`Uncertainty` — Karras et al. 2024 (EDM2): a learned log-variance ``u(σ)`` on
  Fourier features of ``c_noise``; loss ``w·e^{-u}·err + u``, so ``W`` is multiplied by
  ``e^{-u}``.
- :class:`TimeWarp` — after CDCD's time warping (Dieleman et al. 2022): a learned monotone
  piecewise-linear CDF over λ, its density ∝ the loss per bin (mixed with uniform in λ), sampled
  by inverse transform; ``W`` is multiplied by ``q/p``.

λ is the logSNR, ``λ = −2·ln σ``; the bins are equal in λ over the run's
``[λ_min, λ_max] = [−2 ln σ_max, −2 ln σ_min]``.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ADAPTIVE",
    "Adaptive",
    "Importance",
    "TimeWarp",
    "Uncertainty",
    "make_adaptive",
]

_MAX_BINS = 4096


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not integral or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], but got {name}={value!r}")
    return int(value)


def _check_float(name: str, value: Any, allowed: str, ok) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name} must be {allowed}, but got {name}={value!r}")
    return number


def _lam(sigma: Tensor) -> Tensor:
    """logSNR of the VE view, ``λ = −2·ln σ`` (Kingma et al. 2021, VDM)."""
    return -2.0 * torch.log(sigma)


def _sigma(lam: Tensor) -> Tensor:
    """Inverse of :func:`_lam`, ``σ = e^{−λ/2}``."""
    return torch.exp(-0.5 * lam)


def _as_float64(x: Tensor | float) -> Tensor:
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)


def _uniforms(rows: int, n: int, generator: torch.Generator | None) -> tuple[Tensor, torch.device]:
    """``[rows, n]`` float64 uniforms from ``generator`` (on its device), moved to the CPU."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(rows, n, generator=generator, dtype=torch.float64, device=device)
    return u.cpu(), device


def _pick_bins(masses: Tensor, u: Tensor) -> Tensor:
    """Bin index with probabilities ``masses`` (inverse transform of uniforms ``u``)."""
    cumulative = torch.cumsum(masses, 0)
    index = torch.searchsorted(cumulative / cumulative[-1], u, right=True)
    nonzero = torch.nonzero(masses > 0).flatten()
    return index.clamp(int(nonzero[0]), int(nonzero[-1]))


def _like(result: Tensor, lam: Tensor) -> Tensor:
    dtype = lam.dtype if lam.is_floating_point() else torch.float64
    return result.to(device=lam.device, dtype=dtype)


class Adaptive(ABC):
    """An adaptive mechanism of a :class:`~objectives.loss.DiffusionObjective`.

    The objective calls :meth:`bind` from its ``__init__``; after that the mechanism knows the
    density ``p`` (``objective.density``), the run's σ range and the preconditioning
    (``objective.coefficients``).
    """

    name: str = ""

    def __init__(self) -> None:
        self.objective: Any = None
        self.density: Any = None

    # -- binding -------------------------------------------------------------------------------

    def bind(self, objective: Any) -> None:
        """Attach to ``objective``: its density (``objective.density``) and σ range."""
        density = objective.density
        self.objective = objective
        self.density = density
        self.sigma_min = float(density.sigma_min)
        self.sigma_max = float(density.sigma_max)
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                "the objective's sigma range must satisfy 0 < sigma_min < sigma_max, but got "
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )
        self.lam_min = -2.0 * math.log(self.sigma_max)
        self.lam_max = -2.0 * math.log(self.sigma_min)

    def _require_bound(self) -> None:
        if self.density is None:
            raise RuntimeError(
                f"adaptive {self.name!r} is not bound to an objective; pass it to "
                "DiffusionObjective(..., adaptive=...) first"
            )

    def _to_sigma(self, lam: Tensor) -> Tensor:
        return _sigma(lam).clamp(self.sigma_min, self.sigma_max)

    # -- the hooks -------------------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` noise levels: ``(sigma [n] float64, factor [n] float64)``.

        The default draws from the objective's density with ``factor = 1``.
        """
        self._require_bound()
        sigma = self.density.sample(n, generator=generator).to(torch.float64)
        return sigma, torch.ones_like(sigma)

    def transform(self, sigma: Tensor, weighted_err: Tensor) -> Tensor:
        """Per-example loss from the weighted error ``w·factor·err`` (identity by default)."""
        return weighted_err

    def observe(self, sigma: Tensor, weighted_err_detached: Tensor) -> None:  # noqa: B027
        """See the detached per-example loss of a step (as ``DiffusionObjective.loss`` returned
        it, for σ's drawn by :meth:`sample`). Does nothing by default."""

    @abstractmethod
    def effective_factor(self, lam: Tensor) -> Tensor:
        """Factor that multiplies ``p_λ(λ)·w(σ)·σ²/c_out(σ)²`` to give the effective ``W(λ)``."""

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters (the training loop adds them to its optimiser)."""
        return []

    @abstractmethod
    def state_dict(self) -> dict[str, Tensor]:
        """The adapted state, as plain tensors (``torch.load(weights_only=True)`` reads it)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the state written by :meth:`state_dict`."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments (``make_adaptive(self.name, self.params())``)."""


class _BinnedLoss(Adaptive):
    """Shared part of the binned mechanisms: a bias-corrected EMA of the loss per λ-bin.

    Each step, the bins that received samples move their EMA towards the batch mean of the
    (factor-free) loss in the bin: ``m_k ← d·m_k + (1−d)·mean_k``, ``n_k ← d·n_k + (1−d)``, and
    the estimate is ``m_k/n_k`` (Adam's bias correction, so the first observation is taken at
    face value). Non-finite and negative losses are ignored.
    """

    def __init__(self, num_bins: int, ema_decay: float, mix: float) -> None:
        super().__init__()
        self.num_bins = _check_int("num_bins", num_bins, 1, _MAX_BINS)
        self.ema_decay = _check_float("ema_decay", ema_decay, "in [0, 1)", lambda x: 0 <= x < 1)
        self.mix = _check_float("mix", mix, "in (0, 1]", lambda x: 0 < x <= 1)
        self._ema = torch.zeros(self.num_bins, dtype=torch.float64)
        self._norm = torch.zeros(self.num_bins, dtype=torch.float64)
        self._sampled_masses: Tensor | None = None  # the proposal of the last `sample`

    def bind(self, objective: Any) -> None:
        super().bind(objective)
        self.edges = torch.linspace(
            self.lam_min, self.lam_max, self.num_bins + 1, dtype=torch.float64
        )  # [K+1]
        self.bin_width = (self.lam_max - self.lam_min) / self.num_bins

    def bin_index(self, lam: Tensor) -> Tensor:
        """Index of the λ-bin of each ``lam`` (values outside the range go to the end bins)."""
        self._require_bound()
        index = torch.floor((_as_float64(lam) - self.lam_min) / self.bin_width)
        return index.clamp(0, self.num_bins - 1).to(torch.long)

    def _loss_without_factor(self, index: Tensor, loss: Tensor) -> Tensor:
        return loss

    def observe(self, sigma: Tensor, weighted_err_detached: Tensor) -> None:
        """Move the per-bin EMA towards this batch's mean loss per bin."""
        self._require_bound()
        sigma = _as_float64(sigma).reshape(-1)
        loss = _as_float64(weighted_err_detached).reshape(-1)
        valid = torch.isfinite(sigma) & (sigma > 0)
        sigma, loss = sigma[valid], loss[valid]
        index = self.bin_index(_lam(sigma))
        loss = self._loss_without_factor(index, loss)
        keep = torch.isfinite(loss) & (loss >= 0)
        index, loss = index[keep], loss[keep]
        if index.numel() == 0:
            return
        count = torch.bincount(index, minlength=self.num_bins).to(torch.float64)
        # Σ loss/count per bin: the mean, without overflow for losses near float64's maximum
        mean = torch.zeros(self.num_bins, dtype=torch.float64).index_add_(
            0, index, loss / count[index]
        )
        seen = count > 0
        mean = mean[seen]
        d = self.ema_decay
        self._ema[seen] = d * self._ema[seen] + (1.0 - d) * mean
        self._norm[seen] = d * self._norm[seen] + (1.0 - d)

    def loss_estimate(self) -> Tensor:
        """Estimated mean loss per bin, ``[K]`` float64, scaled so that its maximum is 1.

        Bins never observed take the mean of the observed ones; all ones before any observation
        (or when every observed loss is 0).
        """
        seen = self._norm > 0
        estimate = torch.ones(self.num_bins, dtype=torch.float64)
        if seen.any():
            values = self._ema[seen] / self._norm[seen]
            top = values.max()
            if top > 0:
                values = values / top
                estimate[seen] = values
                estimate[~seen] = values.mean()
        return estimate

    def state_dict(self) -> dict[str, Tensor]:
        return {"ema": self._ema.clone(), "norm": self._norm.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for key in ("ema", "norm"):
            if key not in state:
                raise ValueError(
                    f"state of adaptive {self.name!r} lacks {key!r}; got keys {sorted(state)}"
                )
            value = _as_float64(state[key])
            if value.shape != (self.num_bins,):
                raise ValueError(
                    f"state[{key!r}] must have shape ({self.num_bins},) for num_bins="
                    f"{self.num_bins}, but got shape {tuple(value.shape)}"
                )
        self._ema = _as_float64(state["ema"]).clone()
        self._norm = _as_float64(state["norm"]).clone()
        self._sampled_masses = None

    def params(self) -> dict[str, Any]:
        return {"num_bins": self.num_bins, "ema_decay": self.ema_decay, "mix": self.mix}


class Importance(_BinnedLoss):
    """Importance sampling of λ with an adaptive proposal (Kingma & Gao 2023, App. F).

    The proposal is piecewise over the λ-bins and equals ``p`` restricted to a bin within it:
    ``q(λ) = p(λ)·Q_k/P_k`` for λ in bin ``k``, where ``P_k`` is the p-mass of the bin and
    ``Q_k = (1−mix)·L_k·P_k/Σ_j L_j·P_j + mix·P_k`` with ``L_k`` the EMA of the loss in the bin.
    ``Q ∝ L·P`` minimises the variance of ``(p/q)·loss`` when the loss within a bin varies
    little (K&G App. F: ``p(λ) ∝ W(λ)·E‖ε − ε̂‖²``); mixing with ``p`` bounds ``p/q ≤ 1/mix``.
    The factor ``p/q = P_k/Q_k`` is exact, so ``E_q[(p/q)·loss] = E_p[loss]``: the effective
    weighting is unchanged (``effective_factor = 1``) and only the variance drops.

    Within a bin, λ is drawn from ``p`` restricted to it with ``density.icdf``.
    """

    name = "importance"

    def __init__(self, num_bins: int = 32, ema_decay: float = 0.99, mix: float = 0.1) -> None:
        super().__init__(num_bins, ema_decay, mix)

    def bind(self, objective: Any) -> None:
        super().bind(objective)
        cdf = _as_float64(self.density.cdf(self.edges)).clamp(0.0, 1.0)
        cdf = torch.cummax(cdf, dim=0).values  # [K+1], guards against round-off
        p_mass = (cdf[1:] - cdf[:-1]).clamp_min(0.0)
        if not p_mass.sum() > 0:
            raise ValueError(
                f"the density {self.density!r} puts no mass on [lam_min, lam_max] = "
                f"[{self.lam_min}, {self.lam_max}]"
            )
        self._edge_cdf = cdf
        self.p_mass = p_mass / p_mass.sum()  # [K], P_k

    def proposal_masses(self) -> Tensor:
        """``Q_k``, the proposal's mass per bin, ``[K]`` float64 (sums to 1)."""
        self._require_bound()
        p_mass = self.p_mass
        weighted = self.loss_estimate() * p_mass
        total = weighted.sum()
        q_loss = weighted / total if total > 0 else p_mass
        return (1.0 - self.mix) * q_loss + self.mix * p_mass

    def _ratio(self, masses: Tensor) -> Tensor:
        """``P_k/Q_k`` per bin (1 where both are 0)."""
        return torch.where(masses > 0, self.p_mass / masses.clamp_min(1e-300), 1.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """σ ~ q: a bin ``k ~ Q``, then λ from ``p`` restricted to bin ``k`` (inverse transform
        of ``density.cdf`` on the bin's share of it); factor ``P_k/Q_k``."""
        self._require_bound()
        masses = self.proposal_masses()
        self._sampled_masses = masses
        u, device = _uniforms(2, n, generator)
        index = _pick_bins(masses, u[0])  # [n]
        low, high = self._edge_cdf[index], self._edge_cdf[index + 1]
        lo, hi = self.edges[index], self.edges[index + 1]
        lam = _as_float64(self.density.icdf(low + u[1] * (high - low)))
        lam = torch.where(torch.isfinite(lam), lam, 0.5 * (lo + hi))  # guard a 0/0 at a jump
        lam = torch.minimum(torch.maximum(lam, lo), hi)
        return self._to_sigma(lam).to(device), self._ratio(masses)[index].to(device)

    def _loss_without_factor(self, index: Tensor, loss: Tensor) -> Tensor:
        # The loss is (p/q)·w·err for σ's drawn by the last `sample`; divide the factor out so
        # the EMA estimates E_p[w·err | bin] (within a bin, q's shape is p's).
        masses = (
            self._sampled_masses if self._sampled_masses is not None else (self.proposal_masses())
        )
        return loss / self._ratio(masses)[index]

    def log_prob(self, lam: Tensor) -> Tensor:
        """``log q(λ) = log p(λ) + log(Q_k/P_k)`` over λ (−inf outside the range)."""
        self._require_bound()
        lam64 = _as_float64(lam)
        ratio = self._ratio(self.proposal_masses())[self.bin_index(lam64)]
        out = _as_float64(self.density.log_prob(lam64)) - torch.log(ratio)
        inside = (lam64 >= self.lam_min) & (lam64 <= self.lam_max)
        return _like(torch.where(inside, out, -math.inf), lam)

    def cdf(self, lam: Tensor) -> Tensor:
        """CDF of q over λ: ``Σ_{j<k} Q_j + Q_k·(C(λ) − C(e_k))/P_k``, C the density's CDF."""
        self._require_bound()
        lam64 = _as_float64(lam).clamp(self.lam_min, self.lam_max)
        masses = self.proposal_masses()
        index = self.bin_index(lam64)
        before = torch.cat([masses.new_zeros(1), torch.cumsum(masses, 0)])[index]
        inside = (_as_float64(self.density.cdf(lam64)) - self._edge_cdf[index]).clamp_min(0.0)
        share = torch.where(
            self.p_mass[index] > 0,
            inside / (self._edge_cdf[index + 1] - self._edge_cdf[index]),
            0.0,
        )
        return _like((before + masses[index] * share.clamp(0.0, 1.0)).clamp(0.0, 1.0), lam)

    def effective_factor(self, lam: Tensor) -> Tensor:
        """``(q/p)·(p/q) = 1``: importance sampling leaves ``W`` unchanged."""
        return torch.ones_like(lam, dtype=lam.dtype if lam.is_floating_point() else torch.float64)


class TimeWarp(_BinnedLoss):
    """Time warping after CDCD (Dieleman et al. 2022), over λ.

    A monotone piecewise-linear CDF over λ with ``K`` equal bins: the density in bin ``k`` is
    ``q_k = M_k/Δλ`` with ``M_k = (1−mix)·L_k/Σ_j L_j + mix/K``, ``L_k`` the EMA of the loss in
    the bin, i.e. the unnormalised CDF ``Σ_{j≤k} L_j·Δλ`` is the running integral of the loss
    fitted per bin. The uniform share keeps every ``M_k ≥ mix/K > 0``, so the CDF is strictly
    increasing and invertible whatever the losses (zero, huge, non-finite ones are skipped).
    Before any observation it is uniform in λ. σ is drawn by inverse transform, ``factor = 1``:
    the sampling density replaces ``p``, so ``W`` is multiplied by ``q/p``.

    CDCD fits the unnormalised CDF to the cross-entropy itself, which grows monotonically with
    σ, so its density follows the loss's slope; a weighted diffusion loss in F-space is not
    monotone in σ, so here the density follows the loss itself.
    """

    name = "timewarp"

    def __init__(self, num_bins: int = 32, ema_decay: float = 0.99, mix: float = 0.05) -> None:
        super().__init__(num_bins, ema_decay, mix)

    def masses(self) -> Tensor:
        """``M_k``, the learned distribution's mass per bin, ``[K]`` float64 (sums to 1)."""
        estimate = self.loss_estimate()
        return (1.0 - self.mix) * estimate / estimate.sum() + self.mix / self.num_bins

    def _cumulative(self, masses: Tensor) -> Tensor:
        cumulative = torch.cat([masses.new_zeros(1), torch.cumsum(masses, 0)])  # [K+1]
        return cumulative / cumulative[-1]

    def cdf(self, lam: Tensor) -> Tensor:
        """The learned CDF over λ (0 below ``λ_min``, 1 above ``λ_max``)."""
        self._require_bound()
        lam64 = _as_float64(lam).clamp(self.lam_min, self.lam_max)
        masses = self.masses()
        index = self.bin_index(lam64)
        offset = ((lam64 - self.edges[index]) / self.bin_width).clamp(0.0, 1.0)
        out = self._cumulative(masses)[index] + masses[index] * offset
        return _like(out.clamp(0.0, 1.0), lam)

    def icdf(self, u: Tensor) -> Tensor:
        """Inverse of :meth:`cdf` on ``[0, 1]`` (inverse transform sampling)."""
        self._require_bound()
        u64 = _as_float64(u).clamp(0.0, 1.0)
        masses = self.masses()
        cumulative = self._cumulative(masses)
        index = (torch.searchsorted(cumulative, u64, right=True) - 1).clamp(0, self.num_bins - 1)
        offset = ((u64 - cumulative[index]) / masses[index]).clamp(0.0, 1.0)
        lam = (self.edges[index] + offset * self.bin_width).clamp(self.lam_min, self.lam_max)
        return _like(lam, u)

    def log_prob(self, lam: Tensor) -> Tensor:
        """``log q(λ) = log(M_k/Δλ)`` over λ (−inf outside the range)."""
        self._require_bound()
        lam64 = _as_float64(lam)
        out = torch.log(self.masses() / self.bin_width)[self.bin_index(lam64)]
        inside = (lam64 >= self.lam_min) & (lam64 <= self.lam_max)
        return _like(torch.where(inside, out, -math.inf), lam)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """σ by inverse transform of the learned CDF; ``factor = 1``."""
        self._require_bound()
        u, device = _uniforms(1, n, generator)
        sigma = self._to_sigma(self.icdf(u[0])).to(device)
        return sigma, torch.ones_like(sigma)

    def effective_factor(self, lam: Tensor) -> Tensor:
        """``q(λ)/p(λ)``: the learned density replaces ``p`` in ``W`` (inf where ``p = 0``)."""
        self._require_bound()
        lam64 = _as_float64(lam)
        log_p = _as_float64(self.density.log_prob(lam64))
        return _like(torch.exp(_as_float64(self.log_prob(lam64)) - log_p), lam)


class _LogVariance(nn.Module):
    """EDM2's log-variance head: ``MPFourier(c_noise) → Linear → u`` (Karras et al. 2024).

    Fourier features ``√2·cos(2π(f·c_noise + φ))`` with fixed ``f ~ N(0, 1)``, ``φ ~ U(0, 1)``
    drawn from a fixed seed, as EDM2's ``MPFourier``; the linear layer starts at zero (u = 0).
    """

    def __init__(self, num_freqs: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_freqs, generator=generator))
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_freqs, generator=generator))
        self.linear = nn.Linear(num_freqs, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c_noise: Tensor) -> Tensor:  # [B] -> [B], float32
        features = torch.outer(c_noise.to(torch.float32), self.freqs) + self.phases
        return self.linear(torch.cos(features) * math.sqrt(2.0)).squeeze(-1)


class Uncertainty(Adaptive):
    """EDM2's learned uncertainty weighting (Karras et al. 2024; after Kendall et al. 2018).

    Loss ``e^{−u(σ)}·w·err + u(σ)``; for a fixed σ it is minimised by
    ``u(σ) = log E[w·err | σ]``, which makes the loss's scale equal across noise levels. The
    effective weighting is multiplied by ``e^{−u}``. ``u = lr_scale·head(c_noise)``: under Adam
    (whose steps do not depend on the gradient's scale) ``lr_scale`` scales u's learning rate.
    σ is drawn from the objective's density (``factor = 1``).
    """

    name = "uncertainty"
    seed = 0  # fixed Fourier frequencies and phases, as EDM2's buffers

    def __init__(self, num_freqs: int = 16, lr_scale: float = 1.0) -> None:
        super().__init__()
        self.num_freqs = _check_int("num_freqs", num_freqs, 1, _MAX_BINS)
        self.lr_scale = _check_float("lr_scale", lr_scale, "> 0", lambda x: x > 0)
        self.module = _LogVariance(self.num_freqs, self.seed)

    def c_noise(self, sigma: Tensor) -> Tensor:
        """The objective's ``c_noise(σ)`` (EDM: ``ln(σ)/4``)."""
        self._require_bound()
        return self.objective.coefficients(sigma).c_noise

    def u(self, sigma: Tensor) -> Tensor:
        """Learned log-variance ``u(σ)``, ``[B]`` float32, on the module's device."""
        device = self.module.linear.weight.device
        c_noise = torch.as_tensor(self.c_noise(torch.as_tensor(sigma).to(device)))
        c_noise = c_noise.reshape(-1)
        with torch.autocast(device_type=device.type, enabled=False):
            return self.lr_scale * self.module(c_noise)

    def transform(self, sigma: Tensor, weighted_err: Tensor) -> Tensor:
        """``e^{−u(σ)}·weighted_err + u(σ)`` (EDM2's uncertainty-weighted loss).

        u is computed where the head lives (the CPU unless moved) and sent to the loss's
        device, so the optimiser's state for u stays with its parameters, also on resume.
        """
        u = self.u(sigma).to(device=weighted_err.device, dtype=weighted_err.dtype)
        u = u.reshape(weighted_err.shape)
        return weighted_err * torch.exp(-u) + u

    def effective_factor(self, lam: Tensor) -> Tensor:
        """``e^{−u(σ(λ))}``, detached."""
        with torch.no_grad():
            u = self.u(_sigma(_as_float64(lam)).reshape(-1)).to(torch.float64).cpu()
        return _like(torch.exp(-u).reshape(lam.shape), lam)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.module.parameters())

    def state_dict(self) -> dict[str, Tensor]:
        state = self.module.state_dict()
        return {key: value.detach().cpu().clone() for key, value in state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        try:
            self.module.load_state_dict(dict(state))
        except RuntimeError as error:
            raise ValueError(
                f"state does not fit adaptive 'uncertainty' with num_freqs="
                f"{self.num_freqs}: {error}"
            ) from None

    def params(self) -> dict[str, Any]:
        return {"num_freqs": self.num_freqs, "lr_scale": self.lr_scale}


ADAPTIVE: dict[str, type[Adaptive]] = {
    "importance": Importance,
    "uncertainty": Uncertainty,
    "timewarp": TimeWarp,
}

_PARAMS = {
    "importance": ("num_bins", "ema_decay", "mix"),
    "uncertainty": ("num_freqs", "lr_scale"),
    "timewarp": ("num_bins", "ema_decay", "mix"),
}


def make_adaptive(name: str | None, params: dict[str, Any] | None = None) -> Adaptive | None:
    """Build an adaptive mechanism by registry name (``None`` or ``"none"`` → ``None``)."""
    if name is None or name == "none":
        return None
    if name not in ADAPTIVE:
        valid = ", ".join(sorted([*ADAPTIVE, "none"]))
        raise ValueError(f"unknown adaptive {name!r}; valid: {valid}")
    params = dict(params or {})
    unknown = sorted(set(params) - set(_PARAMS[name]))
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for adaptive {name!r}; "
            f"valid: {', '.join(sorted(_PARAMS[name]))}"
        )
    return ADAPTIVE[name](**params)
