"""Inner studies alone: tune sampling step locations for a model you already have.

The model is a sigmatune model file (``--checkpoint``) or any k-diffusion-style denoiser
``D(x, sigma) -> x0_hat`` returned by a ``module:function`` (called with no arguments).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import bilevel
from study.config import Config
from study.trials import load_model_file


def load_denoiser_spec(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` and call the function; it must return ``D(x, sigma)``."""
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
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise ValueError(
            f"module {module_name!r} has no callable {func_name!r} (denoiser {spec!r})"
        )
    denoiser = func()
    if not callable(denoiser):
        raise ValueError(
            f"{spec!r} returned {type(denoiser).__name__}, which is not callable as D(x, sigma)"
        )
    return denoiser


@dataclass
class TuneSummary:
    prefix: str
    results: dict[int, bilevel.InnerResult]
    lines: list[str]


def tune_sampling(
    config: Config,
    *,
    checkpoint: str | None = None,
    denoiser: str | Callable[..., Any] | None = None,
    study_name: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    context: bilevel.RunContext | None = None,
) -> TuneSummary:
    """Run (or resume) one inner study per NFE budget of ``config`` for one model."""
    if (checkpoint is None) == (denoiser is None):
        raise ValueError(
            "give exactly one of checkpoint (a model file) or denoiser ('module:function')"
        )
    if checkpoint is not None:
        source = str(checkpoint)
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"checkpoint {source!r} does not exist; pass a model file written by "
                "`sigmatune run` (see `sigmatune status`) or use --denoiser module:function"
            )
    else:
        source = denoiser if isinstance(denoiser, str) else getattr(denoiser, "__name__", "D")
    D = load_denoiser_spec(denoiser) if isinstance(denoiser, str) else denoiser
    ctx = context or bilevel.make_context(config, progress=progress, log=log)
    if checkpoint is not None:
        D, payload = load_model_file(checkpoint, device=ctx.device)
        if tuple(payload["shape"]) != ctx.shape:
            raise ValueError(
                f"checkpoint {source!r} makes samples of shape {tuple(payload['shape'])}, but "
                f"dataset {config.dataset!r} has shape {ctx.shape}"
            )
    prefix = study_name or f"{config.name}-sampling"
    results: dict[int, bilevel.InnerResult] = {}
    lines: list[str] = []
    for nfe in config.inner.nfe_budgets:
        result = bilevel.run_inner_study(
            ctx,
            D,
            bilevel.inner_study_name(prefix, nfe),
            nfe,
            outer_link={"sigmatune:source": source},
        )
        results[nfe] = result
        karras = result.baseline_fid.get("karras_rho7")
        loglin = result.baseline_fid.get("loglinear")
        line = f"nfe {nfe}: best {result.best_fid:.4g} ({result.best_sampler})"
        if karras:
            line += f"  karras_rho7 {karras:.4g} (x{result.best_fid / karras:.2f})"
        if loglin:
            line += f"  loglinear {loglin:.4g}"
        lines.append(line)
        log(line)
    return TuneSummary(prefix=prefix, results=results, lines=lines)
