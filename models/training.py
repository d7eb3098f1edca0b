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
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "CHECKPOINT_FORMAT",
    "NonFiniteLossError",
    "TrainResult",
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = "sigmatune.training/1"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{12})\.pt$")


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


def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The checkpoint with the most images in ``checkpoint_dir``, or None."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = []
    for p in Path(checkpoint_dir).iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a sigmatune training checkpoint (format {CHECKPOINT_FORMAT!r})"
        )
    return state


def _save_atomically(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _all_finite(module: nn.Module) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point()
    )


# ----------------------------------------------------------------------------- training


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check(name: str, value: float | None, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, but got {name}={value!r}")


def train(
    net: nn.Module,
    objective: Any,
    data: Tensor,
    *,
    train_nimg: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    ema_halflife_nimg: float | None = 20_000,
    ema_rampup_ratio: float | None = 0.05,
    lr_rampup_nimg: float = 10_000,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_nimg: int | None = None,
    callback: Callable[..., Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    grad_clip: float | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``net`` (the raw F) on ``data`` under ``objective`` for ``train_nimg`` images.

    Args:
        net: the raw network ``F(x_in, c_noise)``; moved to ``device`` and trained in place.
        objective: an ``objectives.loss.DiffusionObjective`` (sample_sigma, loss, observe,
            parameters, state_dict, load_state_dict).
        data: the training examples, [N, *shape]; minibatches are drawn with replacement.
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
        checkpoint_dir: where checkpoints are written and resumed from (None: neither).
        checkpoint_nimg: write a checkpoint every this many images (and at the end); None:
            only at the end.
        callback: ``callback(nimg, ema, net)`` after each checkpoint is written (the final one
            included, with ``nimg >= train_nimg``). Exceptions propagate (e.g.
            ``optuna.TrialPruned``); the checkpoint is already on disk. The global RNG state is
            restored after the call, so a callback that samples does not change training.
        device: default: CUDA when available, else CPU.
        progress: show a tqdm progress bar.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        desc: label of the progress bar.

    Resumes from the latest checkpoint in ``checkpoint_dir`` when there is one: the batch size
    and seed must match it. Raises :class:`NonFiniteLossError` when the loss of a step is not
    finite (and before saving non-finite weights). Schedules (learning-rate ramp-up, EMA
    ramp-up) depend on images seen, not on ``train_nimg``, so a run stopped at N images and
    continued to M gives the weights of a run trained to M directly.
    """
    _check("train_nimg", train_nimg, _is_int(train_nimg) and train_nimg >= 1, "an integer >= 1")
    _check("batch_size", batch_size, _is_int(batch_size) and batch_size >= 1, "an integer >= 1")
    _check("lr", lr, lr > 0 and math.isfinite(lr), "> 0 and finite")
    _check(
        "ema_halflife_nimg",
        ema_halflife_nimg,
        ema_halflife_nimg is None or ema_halflife_nimg > 0,
        "> 0 or None",
    )
    _check(
        "ema_rampup_ratio",
        ema_rampup_ratio,
        ema_rampup_ratio is None or ema_rampup_ratio > 0,
        "> 0 or None",
    )
    _check("lr_rampup_nimg", lr_rampup_nimg, lr_rampup_nimg >= 0, ">= 0")
    _check(
        "checkpoint_nimg",
        checkpoint_nimg,
        checkpoint_nimg is None or (_is_int(checkpoint_nimg) and checkpoint_nimg >= 1),
        "an integer >= 1 or None",
    )
    _check("grad_clip", grad_clip, grad_clip is None or grad_clip > 0, "> 0 or None")
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape [N, ...] with N >= 1, but got {tuple(data.shape)}")

    device = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    cuda = device.type == "cuda"
    images = data.ndim == 4
    memory_format = torch.channels_last if (cuda and images) else torch.contiguous_format

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
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(seed)

    nimg, step, losses = 0, 0, []
    resumed = latest_checkpoint(checkpoint_dir)
    rng_state: dict[str, Any] = {"cpu": None, "cuda": None}
    if resumed is not None:
        state = load_checkpoint(resumed)
        for key, value in (("batch_size", batch_size), ("seed", seed)):
            if state[key] != value:
                raise ValueError(
                    f"checkpoint {str(resumed)!r} was written with {key}={state[key]}, "
                    f"but got {key}={value}; use the same {key} or another checkpoint_dir"
                )
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        objective.load_state_dict(state["objective"])
        generator.set_state(state["generator"])
        rng_state = {"cpu": state["torch_rng"], "cuda": state.get("cuda_rng")}
        nimg, step = int(state["nimg"]), int(state["step"])
        losses = [float(v) for v in state["losses"]]
    resumed_from_nimg = nimg
    last_checkpoint = resumed

    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    )
    with torch.random.fork_rng(devices=devices):
        if rng_state["cpu"] is None:
            torch.manual_seed(seed)  # dropout; also seeds CUDA
        else:
            torch.set_rng_state(rng_state["cpu"])
            if cuda and rng_state["cuda"] is not None:
                torch.cuda.set_rng_state(rng_state["cuda"], device)

        def save() -> Path | None:
            nonlocal last_checkpoint
            if checkpoint_dir is None:
                return None
            path = checkpoint_path(checkpoint_dir, nimg)
            state = {
                "format": CHECKPOINT_FORMAT,
                "nimg": nimg,
                "step": step,
                "batch_size": batch_size,
                "seed": seed,
                "net": _cpu_state(net),
                "ema": _cpu_state(ema),
                "optimizer": optimizer.state_dict(),
                "objective": objective.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "losses": torch.tensor(losses, dtype=torch.float64),
            }
            if cuda:
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            _save_atomically(state, path)
            if last_checkpoint is not None and last_checkpoint != path:
                last_checkpoint.unlink(missing_ok=True)
            last_checkpoint = path
            return path

        def at_checkpoint(sigma: Tensor) -> None:
            if not (_all_finite(net) and _all_finite(ema)):
                raise _non_finite("the weights became non-finite", step, nimg - batch_size, sigma)
            save()
            if callback is not None:
                with torch.random.fork_rng(devices=devices):
                    callback(nimg, ema, net)

        bar = tqdm(
            total=train_nimg,
            initial=min(nimg, train_nimg),
            unit="img",
            unit_scale=True,
            desc=desc,
            disable=not progress,
            dynamic_ncols=True,
        )
        net.train()
        sigma = torch.ones(1)
        try:
            while nimg < train_nimg:
                idx = torch.randint(data.shape[0], (batch_size,), generator=generator)
                x0 = data[idx.to(device)]  # [B, *shape], float32
                if images:
                    x0 = x0.contiguous(memory_format=memory_format)
                sigma, factor = objective.sample_sigma(batch_size, generator)  # [B] float64, [B]
                noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
                noise = noise.to(device)
                if images:
                    noise = noise.contiguous(memory_format=memory_format)
                sigma_d = sigma.to(device)
                factor_d = factor.to(device) if torch.is_tensor(factor) else factor

                for group in optimizer.param_groups:
                    ramp = min((nimg + batch_size) / lr_rampup_nimg, 1.0) if lr_rampup_nimg else 1
                    group["lr"] = lr * ramp
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    per_example = objective.loss(net, x0, sigma_d, noise, factor_d)  # [B]
                per_example = per_example.float()
                loss = per_example.mean()
                value = float(loss.detach())
                if not math.isfinite(value):
                    bad = ~torch.isfinite(per_example.detach().cpu())
                    raise _non_finite(f"the loss is {value}", step + 1, nimg, sigma, bad)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                objective.observe(sigma, per_example.detach().cpu())

                step += 1
                nimg += batch_size
                losses.append(value)
                _update_ema(ema, net, nimg, batch_size, ema_halflife_nimg, ema_rampup_ratio)
                bar.update(min(nimg, train_nimg) - bar.n)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{value:.4g}", refresh=False)
                if (
                    checkpoint_nimg is not None
                    and nimg < train_nimg
                    and nimg // checkpoint_nimg > (nimg - batch_size) // checkpoint_nimg
                ):
                    at_checkpoint(sigma)
            if nimg > resumed_from_nimg or resumed is None:
                at_checkpoint(sigma)
            elif not (_all_finite(net) and _all_finite(ema)):
                raise _non_finite("the weights are non-finite", step, nimg, sigma)
        finally:
            bar.close()
    net.eval()
    return TrainResult(
        net=net,
        ema=ema,
        nimg=nimg,
        resumed_from_nimg=resumed_from_nimg,
        losses=losses,
        checkpoint=last_checkpoint,
    )


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
