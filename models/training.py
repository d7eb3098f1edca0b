"""The training loop: Adam, an EMA of the weights, a budget in images, checkpoints and resume.

One step (Karras et al. 2022, section 5 and Algorithm "training" of NVlabs/edm's
``training_loop``, with p and w kept apart as in k-diffusion):

    x0 ~ data (minibatch, with replacement);  (sigma, factor) ~ objective.sample_sigma;
    noise ~ N(0, I);  loss = mean_b objective.loss(F, x0, sigma, noise, factor)_b;
    Adam step on F's weights (and the objective's own, e.g. EDM2's u(sigma));
    EMA of F's weights;  objective.observe(sigma, per-example loss).

Every random draw of a step (minibatch indices, sigma, noise) comes from one seeded
``torch.Generator`` whose state is checkpointed, and dropout draws from torch's global generator
inside ``torch.random.fork_rng`` (also checkpointed), so a resumed run takes exactly the steps
that an uninterrupted one takes. On CUDA the loss runs under bf16 autocast, images in
channels_last; on CPU everything is float32 and deterministic for a seed.

A checkpoint records whose it is: the caller's ``run_key`` and the settings that decide the
weights (:meth:`TrainSettings.trajectory`). Only a checkpoint with the same ones is resumed; any
other file in the folder is moved into its ``ignored/`` subfolder, with a note, and never used.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sigmatune.models.progress import Progress
from sigmatune.objectives.files import torch_save

__all__ = [
    "CHECKPOINT_FORMAT",
    "IGNORED_DIR",
    "IgnoredCheckpointWarning",
    "NonFiniteLossError",
    "SaveError",
    "TrainResult",
    "TrainSettings",
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = "sigmatune.training/2"  # /2: records run_key and settings
IGNORED_DIR = "ignored"  # checkpoints of other runs are moved here, inside checkpoint_dir
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{12})\.pt$")
_NOT_TRAJECTORY = ("train_nimg", "checkpoint_nimg")  # where to stop and when to save


class NonFiniteLossError(RuntimeError):
    """The training loss (or the weights) became non-finite; nothing non-finite was saved.

    Attributes:
        step: 1-based index of the failing step.
        nimg: images trained before the failing step.
        sigma_min, sigma_max: the range of sigma in the failing batch.
    """

    def __init__(
        self, message: str, *, step: int, nimg: int, sigma_min: float, sigma_max: float
    ) -> None:
        super().__init__(message)
        self.step = step
        self.nimg = nimg
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max


class IgnoredCheckpointWarning(UserWarning):
    """A checkpoint in ``checkpoint_dir`` belongs to another run: it was moved aside, unused."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check(name: str, value: float | None, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, but got {name}={value!r}")


@dataclass(frozen=True)
class TrainSettings:
    """What :func:`train` does, checked where it is built.

    Attributes:
        train_nimg: budget in images; training stops at the first multiple of ``batch_size``
            that reaches it.
        batch_size: examples per step.
        lr: Adam's learning rate (after the ramp-up); e.g. 1e-3 for the MLP, 2e-4 for the U-Net.
        ema_halflife_nimg: half-life of the EMA of the weights, in images (None: no EMA, the
            ``ema`` is a copy of the last weights).
        ema_rampup_ratio: the half-life is at most this fraction of the images seen so far
            (NVlabs/edm's ``ema_rampup_ratio``), so early weights are forgotten; None: off.
        lr_rampup_nimg: the learning rate rises linearly over this many images (EDM's
            ``lr_rampup_kimg``); 0 turns it off.
        seed: seeds the generator of minibatches, sigmas and noise, and dropout.
        checkpoint_nimg: write a checkpoint every this many images (and at the end); None:
            only at the end.
        grad_clip: clip the gradient norm to this value (None: no clipping).

    Schedules (learning-rate ramp-up, EMA ramp-up) depend on images seen, not on
    ``train_nimg``, so a run stopped at N images and continued to M gives the weights of a run
    trained to M directly.
    """

    train_nimg: int
    batch_size: int = 128
    lr: float = 1e-3
    ema_halflife_nimg: float | None = 20_000
    ema_rampup_ratio: float | None = 0.05
    lr_rampup_nimg: float = 10_000
    seed: int = 0
    checkpoint_nimg: int | None = None
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        _check(
            "train_nimg",
            self.train_nimg,
            _is_int(self.train_nimg) and self.train_nimg >= 1,
            "an integer >= 1",
        )
        _check(
            "batch_size",
            self.batch_size,
            _is_int(self.batch_size) and self.batch_size >= 1,
            "an integer >= 1",
        )
        _check("lr", self.lr, self.lr > 0 and math.isfinite(self.lr), "> 0 and finite")
        for name in ("ema_halflife_nimg", "ema_rampup_ratio", "grad_clip"):
            value = getattr(self, name)
            _check(name, value, value is None or value > 0, "> 0 or None")
        _check("lr_rampup_nimg", self.lr_rampup_nimg, self.lr_rampup_nimg >= 0, ">= 0")
        _check("seed", self.seed, _is_int(self.seed), "an integer")
        _check(
            "checkpoint_nimg",
            self.checkpoint_nimg,
            self.checkpoint_nimg is None
            or (_is_int(self.checkpoint_nimg) and self.checkpoint_nimg >= 1),
            "an integer >= 1 or None",
        )

    def trajectory(self) -> dict[str, Any]:
        """The settings that decide the weights after a given number of images: all but
        ``train_nimg`` (where to stop) and ``checkpoint_nimg`` (when to save)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_TRAJECTORY
        }


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        net: the trained network (last weights), in eval mode, on the training device.
        ema: the EMA of its weights, in eval mode: the model to sample from.
        nimg: images trained in total (a multiple of the batch size, >= train_nimg).
        resumed_from_nimg: images of the checkpoint this call resumed from (0: fresh start).
        losses: mean loss of every step of the whole run (resumed steps included).
        checkpoint: the last checkpoint written, or None.
    """

    net: nn.Module
    ema: nn.Module
    nimg: int
    resumed_from_nimg: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(checkpoint_dir: str | Path, nimg: int) -> Path:
    """``checkpoint_dir/checkpoint-NNNNNNNNNNNN.pt`` (nimg, zero-padded to 12 digits)."""
    return Path(checkpoint_dir) / f"checkpoint-{int(nimg):012d}.pt"


def _checkpoints_newest_first(checkpoint_dir: str | Path | None) -> list[Path]:
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return []
    found = []
    for p in Path(checkpoint_dir).iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The checkpoint with the most images in ``checkpoint_dir``, or None."""
    return next(iter(_checkpoints_newest_first(checkpoint_dir)), None)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a sigmatune training checkpoint (format {CHECKPOINT_FORMAT!r})"
        )
    return state


class SaveError(OSError):
    """A file could not be written (a full disk, no permission): the message names it and the
    cause; nothing of it was left behind, and a previous file of that name is unchanged.
    ``errno`` is the failed write's (ENOSPC for a full disk)."""


def save_atomically(state: dict[str, Any], path: Path, what: str = "file") -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it into
    place: a reader sees the previous file or the new one, never half of one. A write that
    fails removes the temporary file and raises :class:`SaveError` naming ``what`` (e.g.
    "training checkpoint") and ``path``."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch_save(state, f)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        left = (
            "the previous file is unchanged"
            if os.path.isfile(path)
            else "nothing of it was left behind"
        )
        err = SaveError(f"cannot write the {what} {str(path)!r} ({exc.strerror or exc}); {left}")
        err.errno = exc.errno
        raise err from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _all_finite(module: nn.Module) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point()
    )


def _warn(message: str) -> None:
    warnings.warn(message, IgnoredCheckpointWarning, stacklevel=2)


def _find_own_checkpoint(
    checkpoint_dir: str | Path | None,
    run_key: str | None,
    settings: TrainSettings,
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of this run (same ``run_key`` and trajectory settings) with its
    state; every newer file that is not this run's is moved aside first, with a note."""
    for path in _checkpoints_newest_first(checkpoint_dir):
        state, differences = _read_if_own(path, run_key, settings)
        if state is not None:
            return path, state
        dest = _move_aside(path)
        log(f"checkpoint {str(path)!r} is not resumed ({differences}); moved to {str(dest)!r}")
    return None


def _read_if_own(
    path: Path, run_key: str | None, settings: TrainSettings
) -> tuple[dict[str, Any] | None, str]:
    """``(state, "")`` for a checkpoint of this run, else ``(None, how it differs)``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        return None, f"torch.load(weights_only=True) cannot read it: {type(exc).__name__}"
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        return None, f"its format is {found!r}, not {CHECKPOINT_FORMAT!r}"
    theirs = {"run_key": state.get("run_key"), **state.get("settings", {})}
    ours = {"run_key": run_key, **settings.trajectory()}
    differences = [
        f"{key}={theirs[key]!r} there, {key}={value!r} here" if key in theirs else f"no {key}"
        for key, value in ours.items()
        if key not in theirs or theirs[key] != value
    ]
    return (None, "; ".join(differences)) if differences else (state, "")


def _move_aside(path: Path) -> Path:
    """Move a checkpoint into ``IGNORED_DIR`` beside it, under a name not yet taken there."""
    aside = path.parent / IGNORED_DIR
    aside.mkdir(exist_ok=True)
    dest, k = aside / path.name, 1
    while dest.exists():
        dest, k = aside / f"{path.stem}.{k}{path.suffix}", k + 1
    path.rename(dest)
    return dest


# ----------------------------------------------------------------------------- training


def train(
    net: nn.Module,
    objective: Any,
    data: Tensor,
    settings: TrainSettings,
    *,
    checkpoint_dir: str | Path | None = None,
    run_key: str | None = None,
    callback: Callable[..., Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "train",
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``net`` (the raw F) on ``data`` under ``objective`` as ``settings`` say.

    Args:
        net: the raw network ``F(x_in, c_noise)``; moved to ``device`` and trained in place.
        objective: an ``objectives.loss.DiffusionObjective`` (sample_sigma, loss, observe,
            parameters, state_dict, load_state_dict).
        data: the training examples, [N, *shape]; minibatches are drawn with replacement.
        settings: budget, optimiser, EMA, seed and checkpoint interval.
        checkpoint_dir: where checkpoints are written and resumed from (None: neither).
        run_key: who the checkpoints belong to, an opaque string that the caller computes
            from everything else that defines the run (network, objective, data, study and
            trial). Stored in every checkpoint; None is a key like any other.
        callback: ``callback(nimg, ema, net)`` after each checkpoint is written (the final one
            included, with ``nimg >= train_nimg``). Exceptions propagate (e.g.
            ``optuna.TrialPruned``); the checkpoint is already on disk. The global RNG state is
            restored after the call, so a callback that samples does not change training.
        device: default: CUDA when available, else CPU.
        progress: show progress on stderr (a bar on a terminal, a line every 30 s in a log).
        desc: label of the progress.
        log: receives one line per checkpoint that is not resumed (default: an
            :class:`IgnoredCheckpointWarning`).

    Resumes from the newest checkpoint in ``checkpoint_dir`` that has the same ``run_key`` and
    ``settings.trajectory()``. A checkpoint that differs in any of them (or is unreadable) is
    moved into ``checkpoint_dir/ignored/``, noted through ``log`` and never used, so this run's
    checkpoints never mix with another's. Raises :class:`NonFiniteLossError` when the loss of a
    step is not finite (and before saving non-finite weights).
    """
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape [N, ...] with N >= 1, but got {tuple(data.shape)}")
    run = _set_up(net, objective, data, settings, device, checkpoint_dir, run_key)
    own = _find_own_checkpoint(checkpoint_dir, run_key, settings, log or _warn)
    if own is not None:
        _resume(run, *own)
    with torch.random.fork_rng(devices=_rng_devices(run.device)):
        _seed_global_rng(run, own[1] if own is not None else None)
        with Progress(
            settings.train_nimg,
            desc,
            initial=min(run.nimg, settings.train_nimg),
            unit="img",
            enabled=progress,
        ) as bar:
            run.net.train()
            while run.nimg < settings.train_nimg:
                _step(run)
                if run.step % 10 == 0:
                    bar.set_postfix(loss=f"{run.losses[-1]:.4g}")
                bar.update(min(run.nimg, settings.train_nimg) - bar.n)
                if _checkpoint_due(settings, run.nimg):
                    _checkpoint(run, callback)
            _finish(run, callback)
    run.net.eval()
    return TrainResult(
        net=run.net,
        ema=run.ema,
        nimg=run.nimg,
        resumed_from_nimg=run.resumed_from_nimg,
        losses=run.losses,
        checkpoint=run.checkpoint,
    )


@dataclass
class _Run:
    """One training run: what it trains, where, and where it saves; the state a checkpoint
    holds; and the sigmas of the last batch (for error messages)."""

    settings: TrainSettings
    net: nn.Module
    ema: nn.Module
    objective: Any
    data: Tensor  # [N, *shape], float32, on device
    device: torch.device
    memory_format: torch.memory_format
    params: list[Tensor]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    checkpoint_dir: str | Path | None
    run_key: str | None
    nimg: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    resumed_from_nimg: int = 0
    checkpoint: Path | None = None
    sigma: Tensor = field(default_factory=lambda: torch.ones(1))

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def images(self) -> bool:
        return self.data.ndim == 4


def _set_up(
    net: nn.Module,
    objective: Any,
    data: Tensor,
    settings: TrainSettings,
    device: str | torch.device | None,
    checkpoint_dir: str | Path | None,
    run_key: str | None,
) -> _Run:
    """Network, EMA copy and data on the device (channels_last images on CUDA); Adam over the
    network's and the objective's parameters; the step generator seeded."""
    device = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    images = data.ndim == 4
    memory_format = (
        torch.channels_last if (device.type == "cuda" and images) else torch.contiguous_format
    )
    net.to(device)
    if memory_format is torch.channels_last:
        net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    data = data.to(device=device, dtype=torch.float32)
    if images:
        data = data.contiguous(memory_format=memory_format)
    if device.type != "cpu":
        _place_objective(objective, net, data, device)
    params = list(net.parameters()) + list(objective.parameters())
    return _Run(
        settings=settings,
        net=net,
        ema=ema,
        objective=objective,
        data=data,
        device=device,
        memory_format=memory_format,
        params=params,
        optimizer=torch.optim.Adam(params, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8),
        generator=torch.Generator().manual_seed(settings.seed),
        checkpoint_dir=checkpoint_dir,
        run_key=run_key,
    )


def _resume(run: _Run, path: Path, state: dict[str, Any]) -> None:
    """Weights, EMA, optimiser, objective, step generator and counters from a checkpoint."""
    run.net.load_state_dict(state["net"])
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.objective.load_state_dict(state["objective"])
    run.generator.set_state(state["generator"])
    run.nimg, run.step = int(state["nimg"]), int(state["step"])
    run.losses = [float(v) for v in state["losses"]]
    run.resumed_from_nimg = run.nimg
    run.checkpoint = path


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _seed_global_rng(run: _Run, state: dict[str, Any] | None) -> None:
    """The global generators (dropout): seeded on a fresh start, else the checkpoint's."""
    if state is None:
        torch.manual_seed(run.settings.seed)  # also seeds CUDA
        return
    torch.set_rng_state(state["torch_rng"])
    if run.cuda and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)


def _step(run: _Run) -> None:
    """One Adam step on a fresh minibatch, then the objective's observation and the EMA."""
    s = run.settings
    x0, sigma, factor, noise = _draw_batch(run)
    sigma_d = sigma.to(run.device)
    factor_d = factor.to(run.device) if torch.is_tensor(factor) else factor
    for group in run.optimizer.param_groups:
        group["lr"] = _learning_rate(s, run.nimg)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.cuda):
        per_example = run.objective.loss(run.net, x0, sigma_d, noise, factor_d)  # [B]
    per_example = per_example.float()
    loss = per_example.mean()
    value = float(loss.detach())
    if not math.isfinite(value):
        bad = ~torch.isfinite(per_example.detach().cpu())
        raise _non_finite(f"the loss is {value}", run.step + 1, run.nimg, sigma, bad)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.params, s.grad_clip)
    run.optimizer.step()
    run.objective.observe(sigma, per_example.detach().cpu())

    run.step += 1
    run.nimg += s.batch_size
    run.losses.append(value)
    _update_ema(run.ema, run.net, run.nimg, s.batch_size, s.ema_halflife_nimg, s.ema_rampup_ratio)


def _draw_batch(run: _Run) -> tuple[Tensor, Tensor, Tensor | float, Tensor]:
    """``(x0, sigma, factor, noise)`` from the step generator, in this order of draws; x0 and
    noise on the device, sigma (also kept as ``run.sigma``) and factor on the CPU."""
    batch_size = run.settings.batch_size
    idx = torch.randint(run.data.shape[0], (batch_size,), generator=run.generator)
    x0 = run.data[idx.to(run.device)]  # [B, *shape], float32
    sigma, factor = run.objective.sample_sigma(batch_size, run.generator)  # [B] float64, [B]
    noise = torch.randn(x0.shape, generator=run.generator, dtype=torch.float32).to(run.device)
    if run.images:
        x0 = x0.contiguous(memory_format=run.memory_format)
        noise = noise.contiguous(memory_format=run.memory_format)
    run.sigma = sigma
    return x0, sigma, factor, noise


def _learning_rate(settings: TrainSettings, nimg: int) -> float:
    """Adam's rate for the step after ``nimg`` images: linear ramp-up over lr_rampup_nimg."""
    if not settings.lr_rampup_nimg:
        return settings.lr
    return settings.lr * min((nimg + settings.batch_size) / settings.lr_rampup_nimg, 1.0)


def _checkpoint_due(settings: TrainSettings, nimg: int) -> bool:
    """Whether the last step crossed a multiple of ``checkpoint_nimg`` (the end has its own)."""
    every = settings.checkpoint_nimg
    return (
        every is not None
        and nimg < settings.train_nimg
        and nimg // every > (nimg - settings.batch_size) // every
    )


def _checkpoint(run: _Run, callback: Callable[..., Any] | None) -> None:
    """Check the weights are finite, save them (when there is a checkpoint_dir), call back."""
    if not (_all_finite(run.net) and _all_finite(run.ema)):
        raise _non_finite(
            "the weights became non-finite", run.step, run.nimg - run.settings.batch_size, run.sigma
        )
    if run.checkpoint_dir is not None:
        _save(run)
    if callback is not None:
        with torch.random.fork_rng(devices=_rng_devices(run.device)):
            callback(run.nimg, run.ema, run.net)


def _save(run: _Run) -> None:
    """Write ``checkpoint-<nimg>.pt`` atomically, then delete the run's previous one."""
    path = checkpoint_path(run.checkpoint_dir, run.nimg)
    state = {
        "format": CHECKPOINT_FORMAT,
        "run_key": run.run_key,
        "settings": asdict(run.settings),
        "nimg": run.nimg,
        "step": run.step,
        "net": _cpu_state(run.net),
        "ema": _cpu_state(run.ema),
        "optimizer": run.optimizer.state_dict(),
        "objective": run.objective.state_dict(),
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "losses": torch.tensor(run.losses, dtype=torch.float64),
    }
    if run.cuda:
        state["cuda_rng"] = torch.cuda.get_rng_state(run.device)
    save_atomically(state, path, "training checkpoint")
    if run.checkpoint is not None and run.checkpoint != path:
        run.checkpoint.unlink(missing_ok=True)
    run.checkpoint = path


def _finish(run: _Run, callback: Callable[..., Any] | None) -> None:
    """The final checkpoint and callback, unless this call trained nothing (a finished run
    resumed), which only checks the weights."""
    if run.nimg > run.resumed_from_nimg:
        _checkpoint(run, callback)
    elif not (_all_finite(run.net) and _all_finite(run.ema)):
        raise _non_finite("the weights are non-finite", run.step, run.nimg, run.sigma)


@torch.no_grad()
def _place_objective(objective: Any, net: nn.Module, data: Tensor, device: torch.device) -> None:
    """Put the objective's own modules (EDM2's u(sigma)) on ``device`` before the optimiser (and
    a resumed optimiser state) takes their parameters: with ``objective.to(device)`` where it
    exists, else by one side-effect-free loss evaluation on a single example, which the
    adaptive mechanism answers by moving itself to the batch's device."""
    if not list(objective.parameters()):
        return
    if hasattr(objective, "to"):
        objective.to(device)
        return
    was_training = net.training
    net.eval()  # no dropout: the global RNG is left alone
    try:
        sigma = torch.ones(1, dtype=torch.float64, device=device)
        objective.loss(net, data[:1], sigma, torch.zeros_like(data[:1]), torch.ones_like(sigma))
    finally:
        net.train(was_training)


@torch.no_grad()
def _update_ema(
    ema: nn.Module,
    net: nn.Module,
    nimg: int,
    batch_size: int,
    halflife_nimg: float | None,
    rampup_ratio: float | None,
) -> None:
    """EMA with a half-life in images: beta = 0.5 ** (batch_size / halflife), the half-life
    capped at ``rampup_ratio * nimg`` (NVlabs/edm ``training_loop.py``)."""
    if halflife_nimg is None:
        beta = 0.0
    else:
        halflife = halflife_nimg
        if rampup_ratio is not None:
            halflife = min(halflife, nimg * rampup_ratio)
        beta = 0.5 ** (batch_size / max(halflife, 1e-8))
    # one fused call for all parameters (the per-tensor loop cost ~2x on small networks)
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - beta)
    for b_ema, b_net in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b_net)


def _non_finite(
    what: str, step: int, nimg: int, sigma: Tensor, bad: Tensor | None = None
) -> NonFiniteLossError:
    sigma = sigma.detach().double().cpu().reshape(-1)
    lo, hi = float(sigma.min()), float(sigma.max())
    message = (
        f"non-finite training loss: {what} at step {step} (after {nimg} images) in a batch "
        f"with sigma in [{lo:.4g}, {hi:.4g}]"
    )
    if bad is not None and bool(bad.any()) and bad.shape == sigma.shape:
        message += (
            f"; {int(bad.sum())} examples non-finite, with sigma in "
            f"[{float(sigma[bad].min()):.4g}, {float(sigma[bad].max()):.4g}]"
        )
    message += (
        ". No checkpoint was written for it; lower lr, set grad_clip, or check the weighting "
        "and density at these sigmas."
    )
    return NonFiniteLossError(message, step=step, nimg=nimg, sigma_min=lo, sigma_max=hi)
