"""``sigmatune confirm``: train an outer study's leading configurations again with seeds the
study never used, and rank them by all their models (:mod:`sigmatune.study.confirm`)."""

from __future__ import annotations

import argparse
import json
import sys

from sigmatune.study import records
from sigmatune.study.confirm import (
    ConfirmError,
    confirm_seeds,
    confirm_study,
    confirmations_json,
    format_confirmations,
    pick_trials,
)
from sigmatune.study.context import make_context
from sigmatune.study.storage import open_storage


def main(args: argparse.Namespace) -> int:
    """``sigmatune confirm``."""
    url = args.storage_option or args.storage
    if args.seeds < 1:
        raise ConfirmError(f"--seeds: {args.seeds} is not allowed; give a whole number >= 1")
    storage = open_storage(url)
    name = records.resolve_study_name(storage, url, args.study_name)
    study = records.read_study(storage, name)
    trials = pick_trials(study, args.top, args.trials)  # refused before anything is trained
    overrides = {"storage": url}
    if args.device:
        overrides["device"] = args.device
    config = study.config.replace(**overrides)
    log = (lambda m: print(m, file=sys.stderr)) if args.format == "json" else print
    seeds = confirm_seeds(study.config.seed, args.seeds)
    log(
        f"confirm: trials {', '.join(str(n) for n in trials)} of study {name}, each trained "
        f"again with seed(s) {', '.join(str(s) for s in seeds)}"
    )
    ctx = make_context(config, storage=storage, progress=not args.no_progress, log=log)
    confirmed = confirm_study(ctx, storage, study, trials, seeds, log=log)
    if args.format == "json":
        sys.stdout.write(json.dumps(confirmations_json(confirmed), indent=2) + "\n")
    else:
        print(format_confirmations(study, confirmed, seeds))
    return 0
