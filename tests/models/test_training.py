from __future__ import annotations

import math

import pytest
import torch

from sigmatune.models.data import load_dataset
from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import MLP, UNet
from sigmatune.models.training import NonFiniteLossError, latest_checkpoint, load_checkpoint, train
from sigmatune.objectives.adaptive import ADAPTIVE, make_adaptive
from sigmatune.objectives.densities import LogNormal
from sigmatune.objectives.loss import DiffusionObjective
from sigmatune.objectives.weightings import Unit

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def edm_objective(sigma_data: float, adaptive: str | None = None) -> DiffusionObjective:
    """EDM's training objective: edm parameterisation, unit weight, lognormal(-1.2, 1.2)."""
    density = LogNormal(-1.2, 1.2, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    return DiffusionObjective("edm", density, Unit(), sigma_data, make_adaptive(adaptive, {}))


@pytest.fixture(scope="module")
def gmm():
    return load_dataset("gmm2d", n=2000)


def small_mlp(init_seed: int) -> MLP:
    torch.manual_seed(init_seed)
    return MLP(2, hidden=32, depth=2, emb_dim=16)


def run(data, *, adaptive=None, init_seed=0, **kwargs):
    kwargs = {
        "batch_size": 32,
        "lr": 1e-3,
        "ema_halflife_nimg": 200,
        "lr_rampup_nimg": 100,
        "seed": 7,
        "progress": False,
        **kwargs,
    }
    return train(
        small_mlp(init_seed), edm_objective(float(data.x.std()), adaptive), data.x, **kwargs
    )


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


class Interrupt(Exception):
    pass


def interrupt_at(nimg_stop: int, seen: list[int]):
    def callback(nimg, ema, net):
        seen.append(nimg)
        if nimg == nimg_stop:
            raise Interrupt

    return callback


@pytest.mark.parametrize("adaptive", [None, *sorted(ADAPTIVE)])
def test_run_interrupted_at_a_checkpoint_resumes_to_the_same_weights(gmm, tmp_path, adaptive):
    common = {"adaptive": adaptive, "train_nimg": 32 * 12, "checkpoint_nimg": 32 * 4}
    seen_full: list[int] = []
    full = run(
        gmm, checkpoint_dir=tmp_path / "full", callback=interrupt_at(-1, seen_full), **common
    )
    assert seen_full == [128, 256, 384]
    assert full.nimg == 384 and full.resumed_from_nimg == 0 and len(full.losses) == 12

    seen: list[int] = []
    with pytest.raises(Interrupt):
        run(gmm, checkpoint_dir=tmp_path / "cut", callback=interrupt_at(128, seen), **common)
    assert seen == [128]
    assert latest_checkpoint(tmp_path / "cut").name == "checkpoint-000000000128.pt"
    # A fresh process: other initial weights, a new objective; all comes from the checkpoint.
    resumed = run(
        gmm, checkpoint_dir=tmp_path / "cut", init_seed=1, callback=interrupt_at(-1, seen), **common
    )
    assert seen == [128, 256, 384]
    assert resumed.resumed_from_nimg == 128 and resumed.nimg == 384
    assert_same_state(resumed.net, full.net)
    assert_same_state(resumed.ema, full.ema)
    assert resumed.losses == full.losses
    # Only the latest checkpoint is kept.
    assert [p.name for p in (tmp_path / "cut").iterdir()] == ["checkpoint-000000000384.pt"]
    # Resuming a finished run trains nothing and calls back nothing.
    again = run(
        gmm, checkpoint_dir=tmp_path / "cut", init_seed=2, callback=interrupt_at(-1, seen), **common
    )
    assert again.resumed_from_nimg == 384 and seen == [128, 256, 384]
    assert_same_state(again.ema, full.ema)


def test_run_stopped_by_its_budget_continues_to_the_same_weights(gmm, tmp_path):
    full = run(gmm, train_nimg=320)
    run(gmm, train_nimg=96, checkpoint_dir=tmp_path)
    assert load_checkpoint(latest_checkpoint(tmp_path))["nimg"] == 96
    resumed = run(gmm, train_nimg=320, checkpoint_dir=tmp_path, init_seed=3)
    assert resumed.resumed_from_nimg == 96
    assert_same_state(resumed.ema, full.ema)
    assert_same_state(resumed.net, full.net)
    other_seed = run(gmm, train_nimg=320, seed=8)
    assert not torch.equal(other_seed.net.out.weight, full.net.out.weight)


def test_unet_with_dropout_resumes_to_the_same_weights(tmp_path):
    digits = load_dataset("digits", n=64)

    def go(checkpoint_dir, init_seed, train_nimg, callback=None):
        torch.manual_seed(init_seed)
        net = UNet(channels=8, dropout=0.3)
        return train(
            net,
            edm_objective(digits.sigma_data),
            digits.x,
            train_nimg=train_nimg,
            batch_size=8,
            lr=1e-3,
            seed=0,
            progress=False,
            checkpoint_dir=checkpoint_dir,
            checkpoint_nimg=16,
            callback=callback,
        )

    # A callback that samples (draws from the global RNG) must not change training.
    full = go(None, 0, 48, callback=lambda *_: torch.randn(100))
    go(tmp_path, 0, 24)
    resumed = go(tmp_path, 5, 48)
    assert resumed.resumed_from_nimg == 24
    assert_same_state(resumed.net, full.net)
    assert_same_state(resumed.ema, full.ema)


def test_resume_refuses_another_seed_or_batch_size(gmm, tmp_path):
    run(gmm, train_nimg=64, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="seed=7, but got seed=8"):
        run(gmm, train_nimg=128, checkpoint_dir=tmp_path, seed=8)
    with pytest.raises(ValueError, match="batch_size=32, but got batch_size=16"):
        run(gmm, train_nimg=128, checkpoint_dir=tmp_path, batch_size=16)


@pytest.mark.parametrize("checkpoints", [True, False])
def test_diverging_run_raises_and_writes_no_non_finite_checkpoint(gmm, tmp_path, checkpoints):
    with pytest.raises(NonFiniteLossError) as info:
        run(
            gmm,
            train_nimg=32 * 50,
            lr=1e30,
            lr_rampup_nimg=0,
            checkpoint_dir=tmp_path if checkpoints else None,
            checkpoint_nimg=32,
        )
    error = info.value
    message = str(error)
    print(message)
    assert "non-finite training loss: the loss is" in message
    assert f"step {error.step}" in message and error.step >= 1
    assert f"sigma in [{error.sigma_min:.4g}, {error.sigma_max:.4g}]" in message
    assert SIGMA_MIN <= error.sigma_min <= error.sigma_max <= SIGMA_MAX
    files = list(tmp_path.iterdir())
    assert all(p.suffix == ".pt" for p in files)  # no temporary files left behind
    for path in files:
        state = load_checkpoint(path)
        assert state["nimg"] <= error.nimg
        for part in ("net", "ema"):
            assert all(torch.isfinite(t).all() for t in state[part].values())


def test_bad_arguments_name_the_parameter(gmm):
    with pytest.raises(ValueError, match="train_nimg must be an integer >= 1"):
        run(gmm, train_nimg=0)
    with pytest.raises(ValueError, match="checkpoint_nimg must be"):
        run(gmm, train_nimg=64, checkpoint_nimg=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        run(gmm, train_nimg=64, lr=-1.0)


@pytest.mark.slow
def test_mlp_on_gmm2d_denoises_within_20_percent_of_the_exact_denoiser():
    data = load_dataset("gmm2d", n=20_000, seed=0)
    objective = edm_objective(data.sigma_data)
    torch.manual_seed(0)
    net = MLP(2, hidden=64, depth=3)
    result = train(
        net,
        objective,
        data.x,
        train_nimg=100_000,
        batch_size=256,
        lr=2e-3,
        ema_halflife_nimg=20_000,
        lr_rampup_nimg=0,
        seed=0,
        progress=False,
    )
    D = Denoiser(result.ema, "edm", data.sigma_data)
    mixture = data.analytic
    g = torch.Generator().manual_seed(12345)  # held-out draws, shared by both denoisers
    n = 20_000
    ratios = {}
    with torch.no_grad():
        for sigma in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0):
            x0 = mixture.sample(n, g)
            x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
            exact = (mixture.denoise(x, sigma) - x0).square().sum(dim=1).mean()
            trained = (D(x, sigma) - x0).square().sum(dim=1).mean()
            ratios[sigma] = float(trained / exact)
    print("trained/exact denoising loss:", {s: round(r, 4) for s, r in ratios.items()})
    assert all(math.isfinite(r) for r in ratios.values())
    # The exact denoiser is the minimum; with shared draws the ratio is >= 1 up to MC noise.
    assert min(ratios.values()) > 0.97
    assert max(ratios.values()) < 1.2
