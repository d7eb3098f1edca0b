"""Samplers on explicit sigma schedules, for any k-diffusion-style denoiser ``D(x, sigma)``.

Conventions (k-diffusion): ``x_sigma = x0 + sigma*eps``; the probability-flow ODE is
``dx/dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. 4 with
``s(t) = 1``, ``sigma(t) = t``). A sampler is a plain function ``sampler(D, x, sigmas, ...)``
that integrates from ``sigmas[0]`` to ``sigmas[-1] = 0``; ``D`` receives sigma as a tensor of
shape [B] in x's dtype. Step coefficients are computed from the float64 schedule as Python
floats; the state ``x`` stays in its own dtype and on its own device. A schedule tensor that
requires grad is the one exception: its values stay 0-d float64 tensors, so the output is
differentiable with respect to the step locations (LD3, Tong et al. 2025) and is otherwise the
same computation.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from sigmatune.models.schedules import validate

__all__ = [
    "SAMPLERS",
    "dpmpp_2m",
    "euler",
    "euler_step",
    "generate",
    "get_sampler",
    "heun",
    "heun_step",
    "nfe",
    "steps_for_nfe",
]

DenoiserFn = Callable[[Tensor, Tensor], Tensor]
Noise = Callable[[int], Tensor]
Scalar = float | Tensor  # a Python float, or a 0-d float64 tensor of a schedule requiring grad


def _steps(sigmas: Tensor | Sequence[float]) -> list[float] | list[Tensor]:
    """The validated schedule as Python floats; as 0-d float64 tensors that carry the gradient
    when ``sigmas`` is a tensor requiring grad."""
    s = validate(sigmas)
    if isinstance(sigmas, Tensor) and sigmas.requires_grad:
        return list(sigmas.to(torch.float64).unbind())
    return s.tolist()


def _sigma(x: Tensor, value: Scalar) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=x.device, dtype=x.dtype).expand(x.shape[0])  # [B], x's dtype
    return x.new_full((x.shape[0],), value)  # [B], x's dtype


def _log(value: Scalar) -> Scalar:
    return value.log() if isinstance(value, Tensor) else math.log(value)


def _expm1(value: Scalar) -> Scalar:
    return value.expm1() if isinstance(value, Tensor) else math.expm1(value)


def _sqrt(value: Scalar) -> Scalar:
    return value.sqrt() if isinstance(value, Tensor) else math.sqrt(value)


def _check_churn(S_churn: float, S_min: float, S_max: float, S_noise: float) -> None:
    if not (math.isfinite(S_churn) and S_churn >= 0):
        raise ValueError(f"S_churn must be >= 0 and finite, but got S_churn={S_churn}")
    if not S_min >= 0:
        raise ValueError(f"S_min must be >= 0, but got S_min={S_min}")
    if not S_max >= S_min:
        raise ValueError(f"S_max must be >= S_min={S_min}, but got S_max={S_max}")
    if not (math.isfinite(S_noise) and S_noise >= 0):
        raise ValueError(f"S_noise must be >= 0 and finite, but got S_noise={S_noise}")


def _churn(
    x: Tensor,
    i: int,
    sigma: Scalar,
    n: int,
    S_churn: float,
    S_min: float,
    S_max: float,
    S_noise: float,
    noise: Noise | None,
) -> tuple[Tensor, Scalar]:
    """EDM Algorithm 2, lines 4-6: raise sigma to sigma_hat = sigma (1 + gamma) by adding
    noise of std sqrt(sigma_hat^2 - sigma^2), gamma = min(S_churn/n, sqrt(2) - 1) within
    [S_min, S_max] and 0 elsewhere."""
    gamma = min(S_churn / n, math.sqrt(2) - 1) if S_min <= sigma <= S_max else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    eps = torch.randn_like(x) if noise is None else noise(i)
    return x + _sqrt(sigma_hat**2 - sigma**2) * S_noise * eps, sigma_hat


def euler_step(
    D: DenoiserFn, x: Tensor, sigma: Scalar, sigma_next: Scalar, denoised: Tensor | None = None
) -> Tensor:
    """One Euler step of the probability-flow ODE from ``sigma`` to ``sigma_next`` (Karras et
    al. 2022, Algorithm 2, lines 7-8): x + (sigma_next - sigma) (x - D(x, sigma)) / sigma; into
    sigma_next = 0 it is D(x, sigma), exactly. ``denoised`` reuses a known D(x, sigma). One NFE
    (none with ``denoised``)."""
    if denoised is None:
        denoised = D(x, _sigma(x, sigma))
    if sigma_next == 0:
        return denoised  # x + (0 - sigma) d, exactly
    d = (x - denoised) / sigma
    return x + (sigma_next - sigma) * d


def heun_step(
    D: DenoiserFn, x: Tensor, sigma: Scalar, sigma_next: Scalar, denoised: Tensor | None = None
) -> Tensor:
    """One step of Heun's method from ``sigma`` to ``sigma_next`` (Karras et al. 2022,
    Algorithm 2, lines 7-11): the Euler step, then the trapezoidal correction, which is skipped
    into sigma_next = 0. ``denoised`` reuses a known D(x, sigma). Two NFE (one into 0; one
    fewer with ``denoised``)."""
    if denoised is None:
        denoised = D(x, _sigma(x, sigma))
    if sigma_next == 0:
        return denoised
    d = (x - denoised) / sigma
    x_next = x + (sigma_next - sigma) * d
    d_prime = (x_next - D(x_next, _sigma(x, sigma_next))) / sigma_next
    return x + (sigma_next - sigma) * (0.5 * d + 0.5 * d_prime)


def _one_step_method(
    step: Callable[..., Tensor],
    D: DenoiserFn,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    S_churn: float,
    S_min: float,
    S_max: float,
    S_noise: float,
    noise: Noise | None,
) -> Tensor:
    """The loop every one-step method shares (Karras et al. 2022, Algorithm 2): churn, then
    ``step`` (:func:`euler_step`, :func:`heun_step`) from the raised sigma to the next."""
    s = _steps(sigmas)
    _check_churn(S_churn, S_min, S_max, S_noise)
    n = len(s) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, i, s[i], n, S_churn, S_min, S_max, S_noise, noise)
        x = step(D, x, sigma_hat, s[i + 1])
    return x


def euler(
    D: DenoiserFn,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    noise: Noise | None = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without
    the second-order correction; k-diffusion ``sample_euler``), with optional churn. n NFE."""
    churn = dict(S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise, noise=noise)
    return _one_step_method(euler_step, D, x, sigmas, **churn)


def heun(
    D: DenoiserFn,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    noise: Noise | None = None,
) -> Tensor:
    """Heun's second-order method with churn (Karras et al. 2022, Algorithm 2). The step
    into sigma = 0 is a plain Euler step, so n steps cost 2n - 1 NFE."""
    churn = dict(S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise, noise=noise)
    return _one_step_method(heun_step, D, x, sigmas, **churn)


def dpmpp_2m(
    D: DenoiserFn,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    noise: Noise | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; k-diffusion ``sample_dpmpp_2m``), in
    sigma with t = -ln sigma and h = t_next - t: x_next = (sigma_next/sigma) x -
    expm1(-h) D_hat, D_hat = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_last/h. The first step and
    the step into sigma = 0 are first-order. n NFE. ``noise`` is accepted and unused."""
    del noise  # deterministic
    s = _steps(sigmas)
    old_denoised: Tensor | None = None
    for i in range(len(s) - 1):
        denoised = D(x, _sigma(x, s[i]))
        if s[i + 1] == 0:
            x = denoised
        else:
            h = _log(s[i]) - _log(s[i + 1])
            if old_denoised is None:
                denoised_d = denoised
            else:
                h_last = _log(s[i - 1]) - _log(s[i])
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - _expm1(-h) * denoised_d
        old_denoised = denoised
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m}

_NFE: dict[str, Callable[[int], int]] = {
    "euler": lambda n: n,
    "heun": lambda n: 2 * n - 1,
    "dpmpp_2m": lambda n: n,
}


def _name(sampler: str | Callable[..., Tensor]) -> str:
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(sorted(SAMPLERS))}")
        return sampler
    for name, fn in SAMPLERS.items():
        if fn is sampler:
            return name
    raise ValueError(
        f"sampler {sampler!r} is not in the registry; valid: {', '.join(sorted(SAMPLERS))}"
    )


def get_sampler(sampler: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The sampler function for a registry name; any other callable is returned as is."""
    if isinstance(sampler, str):
        return SAMPLERS[_name(sampler)]
    if not callable(sampler):
        raise ValueError(
            f"sampler must be a name ({', '.join(sorted(SAMPLERS))}) or a function, "
            f"but got sampler={sampler!r}"
        )
    return sampler


def nfe(sampler: str | Callable[..., Tensor], n: int) -> int:
    """Denoiser evaluations of ``n`` steps: euler n, heun 2n - 1, dpmpp_2m n."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, but got n={n}")
    return _NFE[_name(sampler)](int(n))


def steps_for_nfe(sampler: str | Callable[..., Tensor], nfe: int) -> int:
    """The largest number of steps n with ``nfe(sampler, n) <= nfe``."""
    name = _name(sampler)
    n = {"heun": (nfe + 1) // 2}.get(name, nfe)
    if n < 1:
        raise ValueError(
            f"nfe must allow at least one step of {name} ({_NFE[name](1)} NFE), but got nfe={nfe}"
        )
    return int(n)


# The initial noise of recently generated seed batches. Every inner trial of a run generates
# with the same seeds (common random numbers), and drawing it from one generator per image
# costs about as much as sampling a small network (8 ms for 1,000 toy points, 20% of their
# sampling): so it is drawn once and reused. Keyed by (seeds, shape, device, dtype), least
# recently used first out, at most _NOISE_CACHE_BYTES in all.
_NOISE_CACHE: OrderedDict[tuple, Tensor] = OrderedDict()
_NOISE_CACHE_BYTES = 64 * 2**20
_NOISE_CACHE_LOCK = threading.Lock()


def _cached_noise(key: tuple) -> Tensor | None:
    with _NOISE_CACHE_LOCK:
        noise = _NOISE_CACHE.get(key)
        if noise is not None:
            _NOISE_CACHE.move_to_end(key)
        return noise


def _cache_noise(key: tuple, noise: Tensor) -> None:
    size = noise.numel() * noise.element_size()
    if size > _NOISE_CACHE_BYTES:
        return
    with _NOISE_CACHE_LOCK:
        _NOISE_CACHE[key] = noise
        total = sum(t.numel() * t.element_size() for t in _NOISE_CACHE.values())
        while total > _NOISE_CACHE_BYTES:
            _, old = _NOISE_CACHE.popitem(last=False)
            total -= old.numel() * old.element_size()


class _StackedRandn:
    """Standard normal noise [b, *shape] from one generator per image (edm2's
    ``StackedRandomGenerator``): row j is drawn from the generator seeded by ``seeds[j]``.
    :meth:`initial` is every generator's first draw (reused from the cache when these seeds
    were drawn before); calls, as the samplers' ``noise(i)``, are the draws after it. Draws are
    sequential per generator, so ``i`` (the step) is not needed to make them reproducible."""

    def __init__(
        self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.seeds = tuple(int(seed) for seed in seeds)
        self.shape, self.device, self.dtype = shape, device, dtype
        self.generators: list[torch.Generator] | None = None
        self._initial_from_cache = False

    def _draw(self) -> Tensor:
        if self.generators is None:
            self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]
            if self._initial_from_cache:  # advance each generator past its first draw
                self._draw()
        return torch.stack(
            [
                torch.randn(self.shape, generator=g, device=self.device, dtype=self.dtype)
                for g in self.generators
            ]
        )

    def initial(self) -> Tensor:
        """The first draw of every generator, [b, *shape]; the caller must not modify it."""
        key = (self.seeds, self.shape, str(self.device), self.dtype)
        noise = _cached_noise(key)
        if noise is None:
            noise = self._draw()
            _cache_noise(key, noise)
        else:
            self._initial_from_cache = True
        return noise

    def __call__(self, i: int) -> Tensor:
        return self._draw()


def generate(
    D: DenoiserFn,
    sigmas: Tensor | Sequence[float],
    sampler: str | Callable[..., Tensor],
    seeds: Iterable[int],
    shape: Sequence[int],
    batch_size: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **sampler_kwargs: object,
) -> Iterator[Tensor]:
    """Yield batches of samples [b, *shape], one seed per image, in seed order.

    Each image has its own ``torch.Generator`` seeded by its seed (the idea of edm2's
    ``StackedRandomGenerator``): it draws the initial noise ``sigma_max * eps`` and then, in
    order, the churn noise the sampler asks for. So an image depends on its seed alone, not on
    ``batch_size`` nor on its neighbours (common random numbers across trials). The initial
    noise of a batch of seeds is drawn once per process and reused by later calls with the
    same seeds (a cache of at most 64 MiB); the generators are then made only if the sampler
    asks for churn noise. Runs under ``torch.no_grad()``; the grad mode of the caller is
    untouched between batches.
    """
    s = validate(sigmas)
    fn = get_sampler(sampler)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, but got batch_size={batch_size}")
    device = torch.device(device)
    shape = tuple(int(v) for v in shape)
    seed_list = [int(seed) for seed in seeds]
    sigma_max = float(s[0])
    for start in range(0, len(seed_list), int(batch_size)):
        batch_seeds = seed_list[start : start + int(batch_size)]
        randn = _StackedRandn(batch_seeds, shape, device, dtype)
        with torch.no_grad():
            x = sigma_max * randn.initial()  # [b, *shape], a new tensor
            out = fn(D, x, s, noise=randn, **sampler_kwargs)
        yield out
