"""``sigmatune schedule``: one step schedule for a model, without any study.

The ten-second answer beside ``tune-sampling``'s ten-minute one: the schedule of one method
for one model at one NFE (:func:`sigmatune.study.schedules.compute_schedule`: karras,
loglinear, GITS or LD3), printed and written in every export format (json, csv, a k-diffusion
tensor file, diffusers' sigma list; :func:`sigmatune.study.formats.write_schedule_files`),
with what it cost.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigmatune.models.data import load_dataset
from sigmatune.models.placement import PLACEMENTS, Placement
from sigmatune.models.samplers import DenoiserFn, steps_for_nfe
from sigmatune.study.commands.options import diffusers_options_of, parse_set, sigma_range_from_model
from sigmatune.study.config import Config, load_config
from sigmatune.study.context import resolve_device
from sigmatune.study.denoisers import (
    CheckedDenoiser,
    is_diffusers_spec,
    load_model,
    model_info,
    model_sigma_range,
    probe_denoiser,
)
from sigmatune.study.formats import schedule_document, write_schedule_files
from sigmatune.study.schedules import DEFAULT_SETTINGS, check_method, compute_schedule


@dataclass
class ScheduleResult:
    """What :func:`make_schedule` computed and wrote."""

    placement: Placement
    sampler: str
    nfe: int
    document: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def sigmas(self) -> list[float]:
        return [float(s) for s in self.placement.sigmas.tolist()]

    def lines(self) -> list[str]:
        """What the command prints: the sigmas, the cost, the files."""
        p = self.placement
        out = [
            f"{p.method} schedule, {self.sampler} at NFE {self.nfe} "
            f"({len(self.sigmas) - 1} steps): sigmas",
            "  " + ", ".join(f"{s:.6g}" for s in self.sigmas),
            f"cost: {p.denoiser_evaluations} denoiser evaluations in {p.denoiser_calls} calls, "
            f"{p.seconds:.2f} s",
        ]
        out += [f"wrote {fmt}: {path}" for fmt, path in self.paths.items()]
        return out


def make_schedule(
    method: str,
    nfe: int,
    *,
    config: Config,
    sampler: str = "heun",
    checkpoint: str | Path | None = None,
    denoiser: str | DenoiserFn | None = None,
    shape: Sequence[int] | None = None,
    output: str | Path | None = ".",
    rho: float = 7.0,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    diffusers_options: dict[str, Any] | None = None,
    sigma_range_from_model: Sequence[str] = ("sigma_min", "sigma_max"),
) -> ScheduleResult:
    """``sigmatune schedule``: the schedule of ``method`` for a model file (``checkpoint``)
    or a ``module:function`` denoiser at ``nfe``, over the config's ``[sigma_min,
    sigma_max]``, written in every export format into ``output`` (None: nothing written).
    The sample shape comes from the model file, else ``shape``, else the config's data set.
    ``settings[name]`` replace keys of :data:`DEFAULT_SETTINGS` (e.g. ``{"gits":
    {"teacher_steps": 100}}``).

    A diffusers model (``denoiser="diffusers:PATH"``, ``diffusers_options`` as
    ``sigmatune.study.denoisers.DIFFUSERS_OPTIONS``) gives the shape, the config keys in
    ``sigma_range_from_model`` take its own sigma range (a range outside it is refused before
    anything is written), and its ``.diffusers.json`` lists what each of its own schedulers
    accepts."""
    check_method(method)
    steps_for_nfe(sampler, nfe)  # an unknown sampler or too small a budget fails here
    device = resolve_device(config.device)
    D, file_shape, source = load_model(checkpoint, denoiser, device, diffusers_options)
    info = None
    if is_diffusers_spec(denoiser):
        config = model_sigma_range(config, D, sigma_range_from_model)
        info = model_info(D)
    if shape is not None and file_shape is not None and tuple(shape) != file_shape:
        raise ValueError(
            f"shape must be the model's own {file_shape} (or left out), but got {tuple(shape)}"
        )
    if file_shape is None and shape is None and method in PLACEMENTS:
        shape = load_dataset(config.dataset, root=config.data_root or None, n=8).shape
    shape = file_shape or (None if shape is None else tuple(int(s) for s in shape))
    if denoiser is not None and D is not None and shape is not None and method in PLACEMENTS:
        # a user's denoiser is tried before the method runs (nothing is written on failure),
        # and every later call is checked too: one paragraph, never a traceback
        span = {"sigma_min": float(config.sigma_min), "sigma_max": float(config.sigma_max)}
        probe_denoiser(D, str(source), shape, **span, device=device)
        D = CheckedDenoiser(D, str(source))
    placement = compute_schedule(
        method,
        D,
        shape,
        nfe,
        sampler,
        sigma_min=float(config.sigma_min),
        sigma_max=float(config.sigma_max),
        seed=config.seed,
        rho=rho,
        device=device,
        settings={
            name: {**values, **dict((settings or {}).get(name, {}))}
            for name, values in DEFAULT_SETTINGS.items()
        },
    )
    doc = schedule_document(
        placement,
        sampler=sampler,
        nfe=nfe,
        source=source,
        sigma_min=float(config.sigma_min),
        sigma_max=float(config.sigma_max),
        model_info=info,
    )
    result = ScheduleResult(placement, sampler, int(nfe), doc)
    if output is not None:
        result.paths = write_schedule_files(doc, output)
    return result


def main(args: argparse.Namespace) -> int:
    """``sigmatune schedule``."""
    if args.config and args.preset:
        raise ValueError("give a config file or --preset, not both")
    overrides = dict(parse_set(item) for item in args.set or [])
    if args.device:
        overrides["device"] = args.device
    source = args.config or args.preset
    config = (
        load_config(source, overrides)
        if source
        else Config.from_dict({}, source="defaults").replace(overrides)
    )
    # each flag goes to every placement method whose settings have that key (derived from
    # DEFAULT_SETTINGS, so a new method's settings need no line here)
    settings: dict[str, dict[str, int]] = {}
    for method, defaults in DEFAULT_SETTINGS.items():
        for key in ("num_noises", "teacher_steps", "iterations"):
            value = getattr(args, key)
            if value is not None and key in defaults:
                settings.setdefault(method, {})[key] = value
    result = make_schedule(
        args.method,
        args.schedule_nfe,
        config=config,
        sampler=args.schedule_sampler,
        checkpoint=args.checkpoint,
        denoiser=args.denoiser,
        shape=args.shape,
        output=args.output,
        rho=args.rho,
        settings=settings,
        diffusers_options=diffusers_options_of(args),
        sigma_range_from_model=sigma_range_from_model(args),
    )
    print("\n".join(result.lines()))
    return 0
