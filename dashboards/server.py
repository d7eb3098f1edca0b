"""optuna-dashboard on a study's storage and artifact store, bound to 127.0.0.1 by default.

``sigmatune dashboard [STORAGE]`` calls :func:`serve`; tests call :func:`start`, which runs
the same WSGI app (``optuna_dashboard.wsgi``) in a background thread on a free port.
"""

from __future__ import annotations

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


def make_dashboard_server(
    storage: optuna.storages.BaseStorage,
    *,
    artifact_store: Any = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> DashboardServer:
    """Bind optuna-dashboard's WSGI app to ``host:port`` (``port=0``: a free port)."""
    app = wsgi(storage, artifact_store=artifact_store)
    try:
        httpd = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port} ({exc}); choose another --port") from exc
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
    """Serve until interrupted, after printing the URL."""
    server = make_dashboard_server(storage, artifact_store=artifact_store, host=host, port=port)
    log(f"optuna-dashboard: {server.url}  (Ctrl-C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(
            f"note: listening on {host}, reachable from other machines; optuna-dashboard has "
            "no authentication"
        )
    try:
        server.httpd.serve_forever()
    finally:
        server.httpd.server_close()
