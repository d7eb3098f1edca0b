"""What the overhead measurements share: a preset's network, data and schedule, and the sizes."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sigmatune.models.data import Dataset, load_dataset
from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import make_network
from sigmatune.models.samplers import nfe, steps_for_nfe
from sigmatune.models.schedules import karras
from sigmatune.objectives.loss import DiffusionObjective, objective_from_description
from sigmatune.study.config import Config, load_config
from sigmatune.study.spaces import KARRAS_RHO, edm_defaults_description

PRESETS = ("digits", "toy")


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does (per preset where it differs)."""

    repeats: int  # rounds of the training and scoring measurements
    sample_repeats: int  # sampling calls are short and noisy: more rounds
    optuna_repeats: int  # rounds of whole inner studies
    train_steps: dict[str, int] = field(default_factory=dict)
    sample_images: dict[str, int] = field(default_factory=dict)
    sample_loops: dict[str, int] = field(default_factory=dict)  # generations per timed call
    score_images: dict[str, int] = field(default_factory=dict)
    optuna_images: dict[str, int] = field(default_factory=dict)
    optuna_trials: dict[str, int] = field(default_factory=dict)

    def with_repeats(self, repeats: int) -> Sizes:
        return Sizes(
            **{
                **self.__dict__,
                "repeats": repeats,
                "sample_repeats": repeats,
                "optuna_repeats": repeats,
            }
        )


DEFAULT_SIZES = Sizes(
    repeats=7,
    sample_repeats=9,
    optuna_repeats=5,
    train_steps={"digits": 8, "toy": 100},
    sample_images={"digits": 250, "toy": 1000},
    sample_loops={"digits": 1, "toy": 10},  # toy: 10 generations per timed call (>= ~0.3 s)
    score_images={"digits": 1000, "toy": 1000},  # the presets' fid_num_images
    optuna_images={"digits": 64, "toy": 1000},
    optuna_trials={"digits": 16, "toy": 16},  # the presets' inner_trials
)
QUICK_SIZES = Sizes(
    repeats=1,
    sample_repeats=1,
    optuna_repeats=1,
    train_steps={"digits": 2, "toy": 5},
    sample_images={"digits": 32, "toy": 200},
    sample_loops={"digits": 1, "toy": 1},
    score_images={"digits": 64, "toy": 200},
    optuna_images={"digits": 16, "toy": 100},
    optuna_trials={"digits": 6, "toy": 6},
)


@dataclass
class Setup:
    """One preset: its config, data and an untrained network (weights do not change the cost;
    every measurement starts from a copy)."""

    preset: str
    config: Config
    data: Dataset
    net0: nn.Module
    description: str

    @property
    def sigma_data(self) -> float:
        return float(self.data.sigma_data)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def objective(self) -> DiffusionObjective:
        return objective_from_description(edm_defaults_description(self.config, self.sigma_data))

    def denoiser(self) -> Denoiser:
        return Denoiser(copy.deepcopy(self.net0), "edm", self.sigma_data).eval()

    def schedule(self) -> tuple[str, int, Tensor]:
        """The primary inner budget: (sampler, NFE, Karras rho=7 schedule)."""
        sampler = self.config.inner.samplers[0]
        n = steps_for_nfe(sampler, self.config.inner.nfe_budgets[0])
        sigmas = karras(n, self.config.sigma_min, self.config.sigma_max, KARRAS_RHO)
        return sampler, nfe(sampler, n), sigmas


def load_setup(preset: str) -> Setup:
    config = load_config(preset)
    data = load_dataset(config.dataset, seed=config.seed)
    torch.manual_seed(config.seed)
    net = make_network(config.network.name, dict(config.network.params), data.shape)
    params = sum(p.numel() for p in net.parameters())
    description = (
        f"{config.network.name} {dict(config.network.params)} on {config.dataset} "
        f"{tuple(data.shape)}, {params:,} parameters"
    )
    return Setup(preset, config, data, net, description)
