"""``sigmatune run``: create or resume the bilevel study and run it, in this process or in
worker processes (``--workers``, ``--devices``), with the command layer's hooks
(:func:`sigmatune.study.commands.hooks.run_study`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from sigmatune.study.commands.hooks import run_study
from sigmatune.study.commands.options import config_of
from sigmatune.study.commands.workers import run_workers, worker_devices
from sigmatune.study.context import resolve_device
from sigmatune.study.records import held_out_line
from sigmatune.study.storage import redact_url, storage_capabilities


def _storage_notes(config: Any) -> None:
    """What a run should know about its storage: no heartbeats, or an artifact folder that is
    local to each machine under a storage that many machines share."""
    caps = storage_capabilities(config.storage)
    if caps.note:
        print(f"sigmatune: note: {caps.note}")
    if caps.many_machines and not config.artifact_dir and not config.artifact_store:
        print(
            "sigmatune: note: the artifact folder is ./sigmatune-artifacts on this machine; "
            "workers on other machines need the same shared folder (--set "
            "artifact_dir=/shared/path) to resume each other's checkpoints"
        )


def main(args: argparse.Namespace) -> int:
    """``sigmatune run``."""
    config = config_of(args)
    if args.workers is None and not args.devices:  # (each of --devices is checked by workers)
        resolve_device(config.device)  # a device this machine lacks fails before anything else
    where = redact_url(config.storage)
    print(
        f"sigmatune: study {config.name!r} in {where} "
        f"({config.outer.outer_trials} outer x {config.inner.inner_trials} inner trials, "
        f"NFE {list(config.inner.nfe_budgets)})"
    )
    _storage_notes(config)
    if args.workers is not None or args.devices:
        devices = worker_devices(
            args.workers,
            args.devices.split(",") if args.devices else None,
            config.device,
            torch.cuda.device_count(),
        )
        result = run_workers(
            config,
            devices,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
            progress=not args.no_progress,
        )
        if result.exit_code != 0:
            failed = [f"w{k} (exit {c})" for k, c in enumerate(result.codes) if c != 0]
            print(
                f"sigmatune: worker(s) {', '.join(failed)} did not finish; run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return result.exit_code
        best = result.best
    else:
        best = run_study(
            config,
            progress=not args.no_progress,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
        ).best
    if best is None:
        print("sigmatune: no outer trial completed; see `sigmatune status`", file=sys.stderr)
        return 1
    primary = config.inner.nfe_budgets[0]
    print(f"best: trial {best.number} ({best.label})")
    print(f"  NFE {primary}, held-out: {held_out_line(best.inner[primary])}")
    print(
        f"results: {where} (study {config.name!r}); `sigmatune status --storage {where}`, "
        f"`sigmatune export --storage {where}`, `sigmatune dashboard {where}`; before "
        f"calling a winner, `sigmatune confirm --storage {where}` (the leaders trained again "
        "with other seeds)"
    )
    return 0
