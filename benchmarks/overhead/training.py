"""Our ``train()`` against a plain PyTorch loop: same network, batch size, Adam, learning rate,
EDM loss and EMA update; the time ratio (target <= 1.05)."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmarks._common import interleaved, paired_ratio
from benchmarks.overhead.setup import Setup, Sizes
from sigmatune.models.training import TrainSettings, train
from sigmatune.objectives.loss import DiffusionObjective

TARGET = 1.05
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2  # Karras et al. 2022, Table 1


@dataclass(frozen=True)
class TrainingRow:
    preset: str
    network: str
    batch_size: int
    steps: int
    ours_images_per_s: float
    plain_images_per_s: float
    ratio: float  # median over rounds of ours / plain time
    loss_relative_difference: float  # the two losses on one batch: the same objective
    ours_seconds_all: list[float]
    plain_seconds_all: list[float]
    target: float = TARGET

    @property
    def met(self) -> bool:
        return self.ratio <= self.target


def edm_loss_inline(
    net: nn.Module, y: Tensor, sigma: Tensor, noise: Tensor, sigma_data: float
) -> Tensor:
    """EDM's loss as NVlabs/edm writes it: weight (sigma^2 + sd^2)/(sigma sd)^2 times
    |D(y + n) - y|^2, D with EDM preconditioning; the mean over everything."""
    s = sigma.view((-1,) + (1,) * (y.ndim - 1))
    sd2 = sigma_data**2
    x = y + s * noise
    c_skip = sd2 / (s**2 + sd2)
    c_out = s * sigma_data / (s**2 + sd2).sqrt()
    c_in = (s**2 + sd2).rsqrt()
    D = c_skip * x + c_out * net(c_in * x, sigma.log() / 4)
    weight = (s**2 + sd2) / (s * sigma_data) ** 2
    return (weight * (D - y) ** 2).mean()


def plain_train(
    net0: nn.Module,
    data: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    ema_halflife_nimg: float,
    sigma_data: float,
    seed: int = 0,
) -> nn.Module:
    """The plain PyTorch loop: minibatch, EDM loss, Adam step, EMA update; nothing else."""
    torch.manual_seed(seed)
    net = copy.deepcopy(net0).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    beta = 0.5 ** (batch_size / ema_halflife_nimg)
    for _ in range(steps):
        y = data[torch.randint(data.shape[0], (batch_size,))]
        sigma = (torch.randn(batch_size) * EDM_P_STD + EDM_P_MEAN).exp()
        loss = edm_loss_inline(net, y, sigma, torch.randn_like(y), sigma_data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - beta)
    return ema


def our_train(setup: Setup, objective: DiffusionObjective, *, steps: int) -> nn.Module:
    """``models.training.train`` for ``steps`` steps: no progress, no checkpoints, and no
    gradient clipping (the plain loop does not clip either)."""
    cfg = setup.config.train
    settings = TrainSettings(
        train_nimg=steps * cfg.batch_size,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        ema_halflife_nimg=cfg.ema_halflife_nimg,
        seed=setup.config.seed,
    )
    return train(
        copy.deepcopy(setup.net0), objective, setup.data.x, settings, device="cpu", progress=False
    ).ema


def loss_agreement(setup: Setup, objective: DiffusionObjective) -> float:
    """Relative difference of the two losses on one batch: the plain loop trains the same
    objective (EDM's defaults are ``edm`` + ``unit`` + ``lognormal(-1.2, 1.2)``)."""
    g = torch.Generator().manual_seed(1)
    y = setup.data.x[torch.randint(len(setup.data), (64,), generator=g)]
    sigma = (torch.randn(64, generator=g, dtype=torch.float64) * EDM_P_STD + EDM_P_MEAN).exp()
    noise = torch.randn(y.shape, generator=g)
    net = copy.deepcopy(setup.net0)
    with torch.no_grad():  # a non-zero output layer, so F matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        ours = objective.loss(net, y, sigma, noise).mean()
        plain = edm_loss_inline(net, y, sigma.float(), noise, setup.sigma_data)
    return float((ours - plain).abs() / plain.abs())


def measure(setup: Setup, sizes: Sizes, log: Callable[[str], None]) -> TrainingRow:
    cfg = setup.config.train
    steps = sizes.train_steps[setup.preset]
    objective = setup.objective()
    log(f"training: {setup.preset}, {steps} steps of {cfg.batch_size}, {sizes.repeats} rounds")
    times = interleaved(
        {
            "ours": lambda: our_train(setup, objective, steps=steps),
            "plain": lambda: plain_train(
                setup.net0,
                setup.data.x,
                steps=steps,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                ema_halflife_nimg=cfg.ema_halflife_nimg,
                sigma_data=setup.sigma_data,
            ),
        },
        sizes.repeats,
    )
    images = steps * cfg.batch_size
    return TrainingRow(
        preset=setup.preset,
        network=setup.description,
        batch_size=cfg.batch_size,
        steps=steps,
        ours_images_per_s=images / statistics.median(times["ours"]),
        plain_images_per_s=images / statistics.median(times["plain"]),
        ratio=paired_ratio(times["ours"], times["plain"]),
        loss_relative_difference=loss_agreement(setup, objective),
        ours_seconds_all=times["ours"],
        plain_seconds_all=times["plain"],
    )
