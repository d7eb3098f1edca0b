"""A user's model as a denoiser: ``module:function`` specs, sigmatune model files, and the checks
every call of a denoiser that is not ours goes through.

``load_denoiser_spec`` imports ``module:function`` and calls it with no arguments;
``load_diffusers`` wraps a local diffusers model folder (``diffusers:PATH``:
``models.diffusers_models``); ``load_model`` takes a model file (``--checkpoint``) or a spec
(``--denoiser``);
``probe_denoiser`` calls the denoiser once at each end of the sigma range before anything is
created, and ``CheckedDenoiser`` checks every later call (shape, dtype, finiteness), so a
model that fails names itself and its inputs instead of failing deep in a sampler.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sigmatune.models.diffusers_models import load_diffusers_denoiser
from sigmatune.models.samplers import DenoiserFn
from sigmatune.study.errors import DenoiserError, one_line
from sigmatune.study.modelfile import load_model_file, read_model_file

# ``--denoiser diffusers:PATH``: a local diffusers model or pipeline folder.
DIFFUSERS_PREFIX = "diffusers:"
# The keyword arguments of load_diffusers_denoiser a command passes on (class conditioning).
DIFFUSERS_OPTIONS = ("labels", "guidance_scale", "null_label", "timestep_mode")


def is_diffusers_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(DIFFUSERS_PREFIX)


def load_diffusers(spec: str, device: torch.device, options: dict[str, Any] | None = None) -> Any:
    """``diffusers:PATH`` as a :class:`~sigmatune.models.diffusers_models.DiffusersDenoiser`
    on ``device``; ``options`` are :data:`DIFFUSERS_OPTIONS` (class labels, guidance scale,
    null label, timestep mode). A bad folder is a ValueError of one paragraph naming the file
    or key (``DiffusersModelError``)."""
    path = spec[len(DIFFUSERS_PREFIX) :]
    if not path:
        raise ValueError(
            f"denoiser {spec!r} must name a folder: diffusers:PATH, a local model or pipeline "
            "folder (what save_pretrained writes)"
        )
    unknown = sorted(set(options or {}) - set(DIFFUSERS_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for a diffusers model; allowed are "
            f"{', '.join(DIFFUSERS_OPTIONS)}"
        )
    given = {k: v for k, v in (options or {}).items() if v is not None}
    return load_diffusers_denoiser(path, device=device, **given)


def model_info(D: Any) -> dict[str, Any]:
    """What a study stores of a diffusers model (``records.write_model_info``)."""
    return {
        "kind": D.kind,
        "prediction_type": D.prediction_type,
        "sigma_min": float(D.sigma_min),
        "sigma_max": float(D.sigma_max),
        "shape": list(D.shape),
        "image_shape": list(D.image_shape),
        "latent": D.vae is not None,
        "labels": None if D.labels is None else list(D.labels),
        "guidance_scale": D.guidance_scale,
        "null_label": D.null_label,
        "scheduler_config": dict(D.scheduler_config),
    }


def model_sigma_range(
    config: Any, D: Any, defaults: Sequence[str] = ("sigma_min", "sigma_max")
) -> Any:
    """``config`` with the keys in ``defaults`` (those the user did not set) replaced by the
    diffusers model ``D``'s own range, and the resulting range checked against the model's:
    a range outside it is a ``SigmaRangeError`` (one paragraph) before anything is written."""
    own = {"sigma_min": float(D.sigma_min), "sigma_max": float(D.sigma_max)}
    changes = {k: own[k] for k in defaults if k in own}
    if changes:
        config = config.replace(changes)
    lo, hi = float(config.sigma_min), float(config.sigma_max)
    D.check_sigma_range([hi, lo, 0.0] if hi > lo else [hi, 0.0], key="sigma_min/sigma_max")
    return config


def load_denoiser_spec(spec: str) -> DenoiserFn:
    """Import ``module:function`` and call the function; it must return ``D(x, sigma)``.
    The current folder comes first on the import path, so a project's own ``models``
    package is found (sigmatune's own packages are all under ``sigmatune.``). A module that
    fails to import, or a function that raises, is a :class:`DenoiserError` (one paragraph)."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(
            f"denoiser must be 'module:function' (e.g. 'mypkg.models:load_denoiser'), "
            f"but got {spec!r}"
        )
    module_name, func_name = spec.split(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} of denoiser {spec!r}: {exc}"
        ) from exc
    except Exception as exc:  # the module's own code failed (a SyntaxError, a missing file)
        raise DenoiserError(
            f"denoiser {spec!r}: importing module {module_name!r} failed ({one_line(exc)})"
        ) from None
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise ValueError(
            f"module {module_name!r} has no callable {func_name!r} (denoiser {spec!r})"
        )
    try:
        denoiser = func()
    except Exception as exc:
        raise DenoiserError(
            f"denoiser {spec!r}: calling {spec}() failed ({one_line(exc)}); it is called "
            "with no arguments and must return the denoiser D(x, sigma) -> x0_hat"
        ) from None
    if not callable(denoiser):
        raise ValueError(
            f"{spec!r} returned {type(denoiser).__name__}, which is not callable as D(x, sigma)"
        )
    return denoiser


# Samples in the batch a user's denoiser is tried on before anything is created.
PROBE_BATCH = 2


def _sigma_text(sigma: Any) -> str:
    """sigma as a call shows it: one value when the batch shares it (as the samplers call D),
    else its range."""
    if not isinstance(sigma, torch.Tensor):
        return f"{sigma!r}"
    values = sigma.detach().flatten().double().cpu()
    if values.numel() == 0:
        return "[]"
    lo, hi = float(values.min()), float(values.max())
    return f"{hi:.6g}" if lo == hi else f"[{lo:.6g} ... {hi:.6g}]"


def call_denoiser(D: DenoiserFn, name: str, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``D(x, sigma)``, checked: an exception, an answer that is no tensor of x's shape on x's
    device, or one with NaN or inf values is a :class:`DenoiserError` naming the denoiser
    ``name``, the call (its sigma), the shape received and the shape expected."""
    try:
        out = D(x, sigma)
    except Exception as exc:
        raise DenoiserError(
            f"denoiser {name!r} fails when called as D(x, sigma={_sigma_text(sigma)}) with x of "
            f"shape {tuple(x.shape)} ({x.dtype}, {x.device}) and sigma of shape "
            f"{tuple(getattr(sigma, 'shape', ()))}: {one_line(exc)}"
        ) from None
    where = f"from D(x, sigma={_sigma_text(sigma)}) with x of shape {tuple(x.shape)}"
    if not isinstance(out, torch.Tensor):
        kind = type(out)
        shape = getattr(out, "shape", None)
        raise DenoiserError(
            f"denoiser {name!r} returned {kind.__module__}.{kind.__qualname__}"
            + (f" of shape {tuple(shape)}" if shape is not None else "")
            + f" {where}, but D(x, sigma) must return x0_hat, a torch tensor of x's shape "
            f"{tuple(x.shape)}"
        )
    if tuple(out.shape) != tuple(x.shape):
        raise DenoiserError(
            f"denoiser {name!r} returned a tensor of shape {tuple(out.shape)} {where}, but "
            f"x0_hat must have x's shape {tuple(x.shape)} (a batch of {x.shape[0]} samples of "
            f"the data set's shape {tuple(x.shape[1:])})"
        )
    if out.device != x.device:
        raise DenoiserError(
            f"denoiser {name!r} returned a tensor on {out.device} {where} on {x.device}; "
            "x0_hat must be on x's device"
        )
    if not bool(torch.isfinite(out.detach()).all()):
        raise DenoiserError(
            f"denoiser {name!r} returned non-finite values (NaN or inf) {where}: x0_hat must be "
            "finite at every sigma the samplers use (the config's sigma_min to sigma_max)"
        )
    return out


class CheckedDenoiser(torch.nn.Module):
    """A user's ``D(x, sigma)`` whose every call is checked (:func:`call_denoiser`): a failure
    during a search fails that trial with the reason, and anywhere else is one paragraph,
    never a traceback from deep inside a sampler. A network ``D`` is a submodule, so its
    parameters are this module's (LD3 freezes them)."""

    def __init__(self, D: DenoiserFn, name: str) -> None:
        super().__init__()
        self.D = D
        self.name = name

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return call_denoiser(self.D, self.name, x, sigma)


def probe_denoiser(
    D: DenoiserFn,
    name: str,
    shape: Sequence[int],
    *,
    sigma_min: float,
    sigma_max: float,
    device: torch.device,
    x0: torch.Tensor | None = None,
) -> None:
    """Try ``D`` before anything is created: on a batch of :data:`PROBE_BATCH` samples of the
    data set's ``shape`` (``x0`` plus noise, or noise alone), at ``sigma_max`` and at
    ``sigma_min``, with sigma a tensor of one value per sample in x's dtype, as the samplers
    call it. Raises :class:`DenoiserError` (see :func:`call_denoiser`)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((PROBE_BATCH, *(int(s) for s in shape)), generator=g)
    base = torch.zeros_like(noise) if x0 is None else x0[:PROBE_BATCH].float().cpu()
    if base.shape != noise.shape:  # fewer data samples than the batch: noise alone
        base = torch.zeros_like(noise)
    with torch.no_grad():
        for sigma in (float(sigma_max), float(sigma_min)):
            x = (base + sigma * noise).to(device)
            call_denoiser(D, name, x, x.new_full((PROBE_BATCH,), sigma))


def load_model(
    checkpoint: str | Path | None,
    denoiser: str | DenoiserFn | None,
    device: torch.device,
    diffusers_options: dict[str, Any] | None = None,
) -> tuple[DenoiserFn | None, tuple[int, ...] | None, str | None]:
    """``(D, shape from the model file or diffusers model, or None, source)``; the file is
    checked (tensors and plain values only) before any network is built."""
    if checkpoint is not None and denoiser is not None:
        raise ValueError("give one of checkpoint (a model file) or denoiser ('module:function')")
    if checkpoint is not None:
        payload = read_model_file(checkpoint)  # refuses an unsafe file before anything else
        D, _ = load_model_file(checkpoint, device=device)
        return D, tuple(int(s) for s in payload["shape"]), str(checkpoint)
    if denoiser is None:
        return None, None, None
    if is_diffusers_spec(denoiser):
        D = load_diffusers(str(denoiser), device, diffusers_options)
        return D, tuple(D.shape), str(denoiser)
    if diffusers_options and any(v is not None for v in diffusers_options.values()):
        raise ValueError(
            "class labels, guidance scale and null label are options of a diffusers model "
            f"(--denoiser diffusers:PATH), but the denoiser is {denoiser!r}"
        )
    if isinstance(denoiser, str):
        return load_denoiser_spec(denoiser), None, denoiser
    return denoiser, None, getattr(denoiser, "__name__", type(denoiser).__name__)
