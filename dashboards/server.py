"""optuna-dashboard on a study's storage and artifact store, bound to 127.0.0.1 by default.

``sigmatune dashboard [STORAGE]`` calls :func:`serve`; tests call :func:`start`, which runs
the same WSGI app (``optuna_dashboard.wsgi``) in a background thread on a free port.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna_dashboard import wsgi

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class _QuietHandler(WSGIRequestHandler):
    """No line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@dataclass
class DashboardServer:
    """A bound optuna-dashboard server; ``url`` is its dashboard page."""

    httpd: WSGIServer
    thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/dashboard"

    def shutdown(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join(timeout=10)
        self.httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class ListenError(ValueError):
    """An address the dashboard cannot listen on (a port out of range or in use, a host that
    does not resolve here); the message says what to change."""


class _IPv6Server(WSGIServer):
    address_family = socket.AF_INET6


def check_port(port: Any, *, allow_free: bool = False) -> int:
    """A TCP port, 1-65535 (0, "any free port", only where ``allow_free``)."""
    low = 0 if allow_free else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ListenError(f"port must be an integer in {low}-65535, but got {port=}")
    return port


def resolve_host(host: str, port: int) -> socket.AddressFamily:
    """The address family to listen on ``host`` with (IPv6 for ``::`` or ``::1``)."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ListenError(
            f"cannot listen on host {host!r}: it does not resolve to an address of this machine "
            f"({reason}); use --host 127.0.0.1 (this machine only), 0.0.0.0 or :: (all IPv4 "
            "or all IPv6 addresses)"
        ) from None
    families = [info[0] for info in infos]
    return socket.AF_INET if socket.AF_INET in families else families[0]


def check_address(host: str, port: Any) -> None:
    """What ``sigmatune dashboard`` checks before it opens anything: a port in 1-65535 and a
    host that resolves here (a port in use is found when binding)."""
    resolve_host(host, check_port(port))


def make_dashboard_server(
    storage: optuna.storages.BaseStorage,
    *,
    artifact_store: Any = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> DashboardServer:
    """Bind optuna-dashboard's WSGI app to ``host:port`` (``port=0``: a free port); an address
    that cannot be bound is a :class:`ListenError` with one clear paragraph."""
    port = check_port(port, allow_free=True)
    family = resolve_host(host, port)
    server_class = _IPv6Server if family == socket.AF_INET6 else WSGIServer
    app = wsgi(storage, artifact_store=artifact_store)
    try:
        httpd = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:
        hint = {
            errno.EADDRINUSE: "another program listens there; choose another --port",
            errno.EACCES: "ports below 1024 need privileges; choose a --port above 1024",
            errno.EADDRNOTAVAIL: "it is not an address of this machine; choose another --host",
        }.get(exc.errno, "choose another --host or --port")
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(f"cannot listen on {where} ({exc.strerror or exc}): {hint}") from None
    return DashboardServer(httpd)


def start(
    storage: optuna.storages.BaseStorage,
    *,
    artifact_store: Any = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
) -> DashboardServer:
    """The dashboard serving in a daemon thread; stop it with ``.shutdown()``."""
    server = make_dashboard_server(storage, artifact_store=artifact_store, host=host, port=port)
    server.thread = threading.Thread(
        target=server.httpd.serve_forever, daemon=True, name="optuna-dashboard"
    )
    server.thread.start()
    return server


def serve(
    storage: optuna.storages.BaseStorage,
    *,
    artifact_store: Any = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log: Callable[[str], None] = print,
) -> None:
    """Serve until interrupted (Ctrl-C), after printing the URL."""
    check_port(port)
    server = make_dashboard_server(storage, artifact_store=artifact_store, host=host, port=port)
    log(f"optuna-dashboard: {server.url}  (Ctrl-C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(
            f"note: listening on {host}, reachable from other machines; optuna-dashboard has "
            "no authentication"
        )
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        log("optuna-dashboard: stopped")
    finally:
        server.httpd.server_close()
