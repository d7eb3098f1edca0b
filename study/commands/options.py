"""The config a command builds from its arguments: a file or preset, then ``--set`` and flags."""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

from sigmatune.study.config import Config, load_config, preset_names


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as TOML (``3``, ``true``, ``[5, 9]``, ``"tpe"``); a bare
    word that is no TOML value is taken as a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set wants KEY=VALUE (e.g. inner.tune_sigma_range=true), got {item!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key, value


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, key in (
        ("outer_trials", "outer.outer_trials"),
        ("inner_trials", "inner.inner_trials"),
        ("storage", "storage"),
        ("study_name", "name"),
        ("device", "device"),
        ("dataset", "dataset"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    if getattr(args, "nfe", None):
        out["inner.nfe_budgets"] = list(args.nfe)
    if getattr(args, "sampler", None):
        out["inner.samplers"] = list(args.sampler)
    if getattr(args, "reference_stats", None):
        if getattr(args, "dataset", None):
            raise ValueError(
                "give --dataset (images) or --reference-stats (FID statistics), not both; "
                f"got --dataset {args.dataset!r} and --reference-stats {args.reference_stats!r}"
            )
        out["dataset"] = f"stats:{args.reference_stats}"
    for item in getattr(args, "set", None) or []:
        key, value = parse_set(item)
        out[key] = value
    return out


def config_of(args: argparse.Namespace) -> Config:
    """The config of ``run`` and ``tune-sampling``: a file or ``--preset``, with the flags and
    ``--set`` items over it."""
    source = args.config if args.config else args.preset
    if source is None:
        raise ValueError(f"give a config file or --preset NAME ({', '.join(preset_names())})")
    if args.config and args.preset:
        raise ValueError("give a config file or --preset, not both")
    return load_config(source, overrides_of(args))


def diffusers_options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a ``--denoiser diffusers:PATH`` model: class labels, guidance scale,
    null label, timestep mode (None where not given)."""
    return {
        "labels": getattr(args, "class_labels", None),
        "guidance_scale": getattr(args, "guidance_scale", None),
        "null_label": getattr(args, "null_label", None),
        "timestep_mode": getattr(args, "timestep_mode", None),
    }


def sigma_range_from_model(args: argparse.Namespace) -> tuple[str, ...]:
    """The keys of ``sigma_min`` / ``sigma_max`` that the user did not set (by ``--set`` or
    in their own config file; a preset's range is for its data set, not for a model), which
    a diffusers model's own range replaces."""
    given = {parse_set(item)[0] for item in getattr(args, "set", None) or []}
    path = getattr(args, "config", None)
    if path:
        try:
            with open(path, "rb") as f:
                given |= set(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError):
            pass  # the config's own loading says what is wrong with it
    return tuple(k for k in ("sigma_min", "sigma_max") if k not in given)
