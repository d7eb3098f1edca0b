"""``sigmatune tune-sampling``: inner studies alone, for a model file or your own denoiser."""

from __future__ import annotations

import argparse

from sigmatune.study.commands.options import (
    config_of,
    diffusers_options_of,
    sigma_range_from_model,
)
from sigmatune.study.storage import redact_url
from sigmatune.study.tune import tune_sampling


def main(args: argparse.Namespace) -> int:
    """``sigmatune tune-sampling``."""

    config = config_of(args)
    summary = tune_sampling(
        config,
        checkpoint=args.checkpoint,
        denoiser=args.denoiser,
        study_name=args.study_prefix,
        progress=not args.no_progress,
        reference_steps=args.reference_steps,
        diffusers_options=diffusers_options_of(args),
        sigma_range_from_model=sigma_range_from_model(args),
    )
    where = redact_url(config.storage)
    print(
        f"results: study {summary.prefix!r} (inner studies {summary.prefix}/nfe-K) in {where}; "
        f"`sigmatune status --storage {where} --study-name {summary.prefix}`"
    )
    return 0
