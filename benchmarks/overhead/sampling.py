"""``models.samplers.generate`` + ``heun`` against a bare Heun loop of the same NFE that calls
the network with inline preconditioning on noise from one generator; also the sampler function
alone (``models.samplers.heun`` with ``models.denoiser.Denoiser``) on the bare loop's noise, and
``generate``'s first call in a process (its noise cache empty). Time ratios (target <= 1.05)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmarks._common import interleaved, paired_ratio
from benchmarks.overhead.setup import Setup, Sizes
from sigmatune.models import samplers
from sigmatune.models.samplers import generate, get_sampler

TARGET = 1.05


@dataclass(frozen=True)
class SamplingRow:
    preset: str
    network: str
    sampler: str
    nfe: int
    num_images: int
    generations_per_call: int
    generate_images_per_s: float
    bare_images_per_s: float
    ratio: float  # generate / bare, median over rounds
    first_call_ratio: float  # generate with its noise cache emptied / bare
    sampler_ratio: float  # the sampler function alone / bare
    max_abs_difference_sampler_vs_bare: float  # the two loops compute the same samples
    generate_seconds_all: list[float]
    bare_seconds_all: list[float]
    target: float = TARGET

    @property
    def met(self) -> bool:
        return self.ratio <= self.target


def bare_sample(
    net: nn.Module, x: Tensor, sigmas: Sequence[float], sigma_data: float, sampler: str
) -> Tensor:
    """Euler or Heun (Karras et al. 2022, Algorithm 1, no churn; the step into 0 is Euler) on
    the network itself, the EDM preconditioning inline with Python-float coefficients: the
    least a sampler must do."""
    sd2 = sigma_data**2

    def D(x: Tensor, s: float) -> Tensor:
        c_noise = x.new_full((x.shape[0],), math.log(s) / 4)
        out = net(x / math.sqrt(s * s + sd2), c_noise)
        return (sd2 / (s * s + sd2)) * x + (s * sigma_data / math.sqrt(s * s + sd2)) * out

    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = D(x, s)
        if s_next == 0:
            return denoised
        d = (x - denoised) / s
        x_next = x + (s_next - s) * d
        if sampler == "euler":
            x = x_next
            continue
        d_next = (x_next - D(x_next, s_next)) / s_next
        x = x + (s_next - s) * (0.5 * d + 0.5 * d_next)
    return x


def measure(setup: Setup, sizes: Sizes, log: Callable[[str], None]) -> SamplingRow:
    sampler, n_fe, sigmas = setup.schedule()
    if sampler not in ("euler", "heun"):
        raise ValueError(f"the bare loop is euler/heun only, but the preset uses {sampler!r}")
    n_images = sizes.sample_images[setup.preset]
    batch_size = min(setup.config.inner.batch_size, n_images)
    D = setup.denoiser()
    s_list = [float(s) for s in sigmas]
    fn = get_sampler(sampler)
    g = torch.Generator().manual_seed(0)
    noise = [
        s_list[0] * torch.randn(min(batch_size, n_images - i), *setup.shape, generator=g)
        for i in range(0, n_images, batch_size)
    ]
    seeds = range(n_images)
    loops = sizes.sample_loops[setup.preset]

    def bare_once() -> list[Tensor]:
        with torch.no_grad():
            return [bare_sample(D.net, x, s_list, setup.sigma_data, sampler) for x in noise]

    def function_once() -> list[Tensor]:
        with torch.no_grad():
            return [fn(D, x, sigmas) for x in noise]

    def repeated(once: Callable[[], object]) -> Callable[[], None]:
        def call() -> None:
            for _ in range(loops):
                once()

        return call

    def first_call() -> None:
        samplers._NOISE_CACHE.clear()  # as in a process's first trial
        list(generate(D, sigmas, sampler, seeds, setup.shape, batch_size))

    log(
        f"sampling: {setup.preset}, {loops} x {n_images} images per call, {sampler} {n_fe} NFE, "
        f"{sizes.sample_repeats} rounds"
    )
    diff = max(float((a - b).abs().max()) for a, b in zip(bare_once(), function_once()))
    times = interleaved(
        {
            "generate": repeated(
                lambda: list(generate(D, sigmas, sampler, seeds, setup.shape, batch_size))
            ),
            "first": repeated(first_call),
            "sampler": repeated(function_once),
            "bare": repeated(bare_once),
        },
        sizes.sample_repeats,
    )
    images = loops * n_images
    return SamplingRow(
        preset=setup.preset,
        network=setup.description,
        sampler=sampler,
        nfe=n_fe,
        num_images=n_images,
        generations_per_call=loops,
        generate_images_per_s=images / statistics.median(times["generate"]),
        bare_images_per_s=images / statistics.median(times["bare"]),
        ratio=paired_ratio(times["generate"], times["bare"]),
        first_call_ratio=paired_ratio(times["first"], times["bare"]),
        sampler_ratio=paired_ratio(times["sampler"], times["bare"]),
        max_abs_difference_sampler_vs_bare=diff,
        generate_seconds_all=times["generate"],
        bare_seconds_all=times["bare"],
    )
