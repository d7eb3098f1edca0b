from __future__ import annotations

import contextlib
import io
import math
import warnings

import pytest
import torch

from sigmatune.models.data import load_dataset
from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import MLP, UNet
from sigmatune.models.training import (
    IGNORED_DIR,
    IgnoredCheckpointWarning,
    NonFiniteLossError,
    TrainSettings,
    latest_checkpoint,
    load_checkpoint,
    train,
)
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


def run(data, *, adaptive=None, init_seed=0, progress=False, **kwargs):
    """train() of a small MLP on ``data``: TrainSettings from ``kwargs`` (with these tests'
    defaults), the rest (checkpoint_dir, run_key, callback, log, ...) passed to train()."""
    options = {
        key: kwargs.pop(key)
        for key in ("checkpoint_dir", "run_key", "callback", "log", "desc")
        if key in kwargs
    }
    settings = TrainSettings(
        **{
            "batch_size": 32,
            "lr": 1e-3,
            "ema_halflife_nimg": 200,
            "lr_rampup_nimg": 100,
            "seed": 7,
            **kwargs,
        }
    )
    net = small_mlp(init_seed)
    objective = edm_objective(float(data.x.std()), adaptive)
    return train(net, objective, data.x, settings, progress=progress, **options)


def assert_same_state_dicts(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert_same_state_dicts(a.state_dict(), b.state_dict())


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
        settings = TrainSettings(
            train_nimg=train_nimg, batch_size=8, lr=1e-3, seed=0, checkpoint_nimg=16
        )
        return train(
            net,
            edm_objective(digits.sigma_data),
            digits.x,
            settings,
            progress=False,
            checkpoint_dir=checkpoint_dir,
            callback=callback,
        )

    # A callback that samples (draws from the global RNG) must not change training.
    full = go(None, 0, 48, callback=lambda *_: torch.randn(100))
    go(tmp_path, 0, 24)
    resumed = go(tmp_path, 5, 48)
    assert resumed.resumed_from_nimg == 24
    assert_same_state(resumed.net, full.net)
    assert_same_state(resumed.ema, full.ema)


def checkpoint_names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_checkpoint_of_another_lr_is_not_resumed_but_moved_aside(gmm, tmp_path):
    old = run(gmm, train_nimg=64, lr=1e-3, checkpoint_dir=tmp_path)
    old_state = load_checkpoint(old.checkpoint)
    notes: list[str] = []
    new = run(gmm, train_nimg=128, lr=2e-3, checkpoint_dir=tmp_path, log=notes.append)
    # Trained all its images from scratch: the weights of a run that never saw the folder.
    assert new.resumed_from_nimg == 0 and new.nimg - new.resumed_from_nimg == 128
    assert len(new.losses) == 4
    assert_same_state(new.ema, run(gmm, train_nimg=128, lr=2e-3).ema)
    # One note naming what differs; the old checkpoint kept, unchanged, out of the way.
    assert len(notes) == 1
    assert "lr=0.001 there, lr=0.002 here" in notes[0] and "checkpoint-000000000064.pt" in notes[0]
    assert checkpoint_names(tmp_path) == ["checkpoint-000000000128.pt"]
    assert checkpoint_names(tmp_path / IGNORED_DIR) == ["checkpoint-000000000064.pt"]
    aside = load_checkpoint(tmp_path / IGNORED_DIR / "checkpoint-000000000064.pt")
    assert_same_state_dicts(aside["net"], old_state["net"])
    # The same run_key and settings resume this run's own checkpoint.
    more = run(gmm, train_nimg=192, lr=2e-3, checkpoint_dir=tmp_path, log=notes.append)
    assert more.resumed_from_nimg == 128 and more.nimg == 192 and len(notes) == 1
    assert_same_state(more.ema, run(gmm, train_nimg=192, lr=2e-3).ema)


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 2e-3},
        {"batch_size": 16},
        {"seed": 8},
        {"ema_halflife_nimg": 100},
        {"ema_rampup_ratio": None},
        {"lr_rampup_nimg": 0},
        {"grad_clip": 1.0},
        {"run_key": "study-b/trial-0000"},
        {"run_key": None},
    ],
)
def test_checkpoint_with_another_run_key_or_trajectory_setting_is_not_resumed(
    gmm, tmp_path, change
):
    first = {"run_key": "study-a/trial-0000", "checkpoint_dir": tmp_path, "train_nimg": 64}
    run(gmm, **first)
    notes: list[str] = []
    other = run(gmm, **{**first, "train_nimg": 128, **change, "log": notes.append})
    assert other.resumed_from_nimg == 0 and other.nimg == 128
    (key,) = change
    assert len(notes) == 1 and f"{key}=" in notes[0]
    assert checkpoint_names(tmp_path / IGNORED_DIR) == ["checkpoint-000000000064.pt"]


@pytest.mark.parametrize("change", [{}, {"checkpoint_nimg": 32}, {"train_nimg": 96}])
def test_same_run_key_and_trajectory_resume(gmm, tmp_path, change):
    first = {"run_key": "study-a/trial-0000", "checkpoint_dir": tmp_path, "train_nimg": 64}
    run(gmm, **first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = run(gmm, **{**first, "train_nimg": 128, **change})
    assert again.resumed_from_nimg == 64 and again.nimg == change.get("train_nimg", 128)
    assert not (tmp_path / IGNORED_DIR).exists()


def test_ignored_checkpoint_warns_by_default_and_each_foreign_one_is_kept(gmm, tmp_path):
    run(gmm, train_nimg=64, run_key="a", checkpoint_dir=tmp_path)
    with pytest.warns(IgnoredCheckpointWarning, match="run_key='a' there, run_key='b' here"):
        run(gmm, train_nimg=64, run_key="b", checkpoint_dir=tmp_path)
    with pytest.warns(IgnoredCheckpointWarning, match="run_key='b' there, run_key='c' here"):
        run(gmm, train_nimg=64, run_key="c", checkpoint_dir=tmp_path)
    assert checkpoint_names(tmp_path) == ["checkpoint-000000000064.pt"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["run_key"] == "c"
    aside = tmp_path / IGNORED_DIR
    assert checkpoint_names(aside) == ["checkpoint-000000000064.1.pt", "checkpoint-000000000064.pt"]
    assert {load_checkpoint(p)["run_key"] for p in aside.iterdir()} == {"a", "b"}


def test_unreadable_or_old_format_checkpoints_are_moved_aside_unused(gmm, tmp_path):
    (tmp_path / "checkpoint-000000000999.pt").write_bytes(b"not a checkpoint")
    torch.save(
        {"format": "sigmatune.training/1", "batch_size": 32, "seed": 7},
        tmp_path / "checkpoint-000000000064.pt",
    )
    notes: list[str] = []
    result = run(gmm, train_nimg=64, checkpoint_dir=tmp_path, log=notes.append)
    assert result.resumed_from_nimg == 0 and result.nimg == 64
    assert len(notes) == 2
    assert "cannot read it" in notes[0] and "weights_only=False" not in notes[0]
    assert "'sigmatune.training/1'" in notes[1]
    assert checkpoint_names(tmp_path) == ["checkpoint-000000000064.pt"]
    assert checkpoint_names(tmp_path / IGNORED_DIR) == [
        "checkpoint-000000000064.pt",
        "checkpoint-000000000999.pt",
    ]


def test_progress_in_a_log_is_a_few_plain_lines(gmm):
    stderr = io.StringIO()  # not a terminal
    with contextlib.redirect_stderr(stderr):
        run(gmm, train_nimg=8 * 300, batch_size=8, progress=True, desc="toy train")
    text = stderr.getvalue()
    print(text)
    lines = text.splitlines()
    assert 2 <= len(lines) <= 4 and len(text) < 400
    assert "\r" not in text and all(line.startswith("toy train: ") for line in lines)
    assert lines[0].startswith("toy train: 0/2,400 img")
    assert lines[-1].startswith("toy train: 2,400/2,400 img (100%)") and "loss=" in lines[-1]

    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet):
        run(gmm, train_nimg=8 * 300, batch_size=8, progress=False)
    assert quiet.getvalue() == ""


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
    settings = TrainSettings(
        train_nimg=100_000, batch_size=256, lr=2e-3, ema_halflife_nimg=20_000, lr_rampup_nimg=0
    )
    result = train(net, objective, data.x, settings, progress=False)
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
