"""Optuna's gRPC storage proxy in front of the study's database (``sigmatune storage-proxy``).

One proxy process holds a few database connections (one per server thread) and serves any
number of workers started with ``--storage grpc://HOST:PORT``; workers then hold no database
connections at all. What the proxy serves is Optuna's whole storage API (studies, trials,
params, values, intermediate values, user and system attrs, so enqueued trials, retries and
artifact links too), but not Optuna's heartbeats, which ``study.storage`` adds on the worker
side (see ``optuna_adapter.HeartbeatGrpcStorageProxy`` and ``storage.storage_capabilities``).
"""

from __future__ import annotations

import argparse
import errno
import socket
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import optuna

from sigmatune.study import optuna_adapter as adapter
from sigmatune.study.storage import (
    DEFAULT_GRPC_PORT,
    GRPC_HINT,
    StorageError,
    grpc_target,
    make_storage,
    parse_storage_url,
    redact_url,
)

__all__ = ["PROXY_THREADS", "open_proxied_storage", "serve_storage_proxy"]

# Server threads, each holding at most one database connection while it serves a call.
PROXY_THREADS = 8
ANY_ADDRESS = ("0.0.0.0", "::", "[::]", "")


def open_proxied_storage(
    storage_url: str, threads: int = PROXY_THREADS
) -> optuna.storages.BaseStorage:
    """The database the proxy serves, in Optuna's in-process cache (as Optuna's docs ask)."""
    loc = parse_storage_url(storage_url)
    if loc.kind not in ("server", "sqlite"):
        raise StorageError(
            f"cannot serve storage {redact_url(loc.url)!r} through the gRPC proxy: it is a "
            f"{loc.kind} storage, and Optuna's proxy serves a database (RDB) storage only; give "
            "it a postgresql+psycopg://, mysql+pymysql:// or sqlite:/// URL"
        )
    storage = make_storage(storage_url, heartbeat_interval=None, max_connections=threads)
    return optuna.storages.get_storage(storage)


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`StorageError` unless ``host:port`` can be listened on now."""
    if not 1 <= int(port) <= 65535:
        raise StorageError(f"port must be from 1 to 65535, but got {port=}")
    bare = host.strip("[]") or "0.0.0.0"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StorageError(f"cannot listen on {host}:{port}: unknown host ({exc})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # but never SO_REUSEPORT
        try:
            s.bind(address)
            s.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "the port is already in use; choose another --port or stop what holds it"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "the address is not one of this machine's; give one of its addresses"
            elif exc.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need root); choose a port >= 1024"
            else:
                why = str(exc)
            raise StorageError(f"cannot listen on {host}:{port}: {why}") from None


def serve_storage_proxy(
    storage_url: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_GRPC_PORT,
    *,
    threads: int = PROXY_THREADS,
    log: Callable[[str], None] = print,
) -> None:
    """Serve the storage at ``storage_url`` to ``grpc://host:port`` clients until interrupted.

    Runs ``optuna.storages.run_grpc_proxy_server``. Every fault found before serving (gRPC
    not installed, a storage that cannot be opened or proxied, a port in use) is one
    :class:`StorageError`, and nothing is served or written.
    """
    if threads < 1:
        raise StorageError(f"threads must be at least 1, but got {threads=}")
    try:
        adapter.check_grpc_installed()
    except ImportError as exc:
        raise StorageError(
            f"cannot run the gRPC storage proxy: gRPC is not installed ({exc}); install it: "
            f"{GRPC_HINT}"
        ) from None
    check_port_free(host, port)
    storage = open_proxied_storage(storage_url, threads)
    where = "THIS_MACHINE" if host in ANY_ADDRESS else host
    log(
        f"sigmatune: gRPC storage proxy for {redact_url(storage_url)} on {host}:{port} "
        f"({threads} threads, at most {threads} database connections); start workers with "
        f"--storage grpc://{where}:{port}"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(
                storage,
                host=grpc_target(host),
                port=int(port),
                thread_pool=ThreadPoolExecutor(max_workers=threads),
            )
    except RuntimeError as exc:
        if "Failed to bind" not in str(exc):
            raise
        raise StorageError(
            f"cannot listen on {host}:{port}: the port was taken meanwhile; choose another --port"
        ) from None
    except KeyboardInterrupt:
        log("sigmatune: storage proxy stopped")


def main(args: argparse.Namespace) -> int:
    """``sigmatune storage-proxy``."""

    serve_storage_proxy(args.storage, args.host, args.port, threads=args.threads)
    return 0
