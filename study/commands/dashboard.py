"""``sigmatune dashboard``: optuna-dashboard on a storage and its artifact store."""

from __future__ import annotations

import argparse

import optuna

from sigmatune.dashboards import server
from sigmatune.study.artifacts import bucket_store
from sigmatune.study.storage import artifact_dir_for, open_storage


def main(args: argparse.Namespace) -> int:
    """``sigmatune dashboard``."""
    server.check_address(args.host, args.port)  # a bad --host or --port fails before anything opens
    storage = open_storage(args.storage)
    # a viewer creates nothing: the store reads the bucket, or the folder where it exists
    artifact_store = bucket_store(args.artifact_store or "")
    if artifact_store is None:
        folder = artifact_dir_for(args.storage, args.artifact_dir or "")
        artifact_store = optuna.artifacts.FileSystemArtifactStore(folder)
    server.serve(storage, artifact_store=artifact_store, host=args.host, port=args.port)
    return 0
