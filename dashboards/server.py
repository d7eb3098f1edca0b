"""optuna-dashboard on a study's storage and artifact store, bound to 127.0.0.1 by default.

``sigmatune dashboard [STORAGE]`` calls :func:`serve`; tests call :func:`start`, which runs
the same WSGI app (``optuna_dashboard.wsgi``) in a background thread on a free port.

Two things of optuna-dashboard's are adjusted on the way out (:func:`dashboard_app`), nothing
in the storage:

- the study list, which shows the newest study first, lists each outer study first and its
  inner studies after it (``/api/studies`` is reordered; optuna-dashboard's list shows that
  order reversed unless its "Sort ascending" is chosen);
- the page gets one style rule, ``main { min-width: 0 }``: optuna-dashboard's main column is
  a flex item that grew to its widest unwrapped line (a trial's user attribute, e.g. its
  held-out summary), so an outer trial's page was wider than the window; now it is as wide as
  the window and such a line scrolls in its own box, as optuna-dashboard lays it out.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna_dashboard import wsgi

from sigmatune.study.records import OUTER_STUDY, ROLE

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

# Added to every page's <head>: see the module docstring.
PAGE_STYLE = b"<style>main{min-width:0}</style>"


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


# --------------------------------------------------------------------------------------------
# What is adjusted in optuna-dashboard's answers


def _attrs(summary: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in summary.get("user_attrs") or []}


def outer_first(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``/api/studies``' list in the order that optuna-dashboard's default ("Sort descending",
    which reverses it) shows as: each outer study (newest first) followed by its inner studies
    (newest first); a study of neither role stands alone."""
    ids = {s["study_name"]: s["study_id"] for s in summaries}

    def key(s: dict[str, Any]) -> tuple[int, int, int]:
        attrs = _attrs(s)
        if attrs.get(ROLE) != "inner":
            return (s["study_id"], 1, s["study_id"])
        outer = attrs.get(OUTER_STUDY)
        if outer not in ids:  # no link (a sampling study's NAME/nfe-K): the name's prefix
            parts = s["study_name"].split("/")
            prefixes = ("/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1))
            outer = next((p for p in prefixes if p in ids), None)
        return (ids.get(outer, s["study_id"]), 0, s["study_id"])

    return sorted(summaries, key=key)


def _call(app: Callable, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run a WSGI app on ``environ`` and collect its whole answer."""
    answer: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        answer["status"], answer["headers"] = status, headers
        return chunks.append

    result: Iterable[bytes] = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return answer["status"], answer["headers"], b"".join(chunks)


def _adjust_studies(body: bytes) -> bytes:
    doc = json.loads(body)
    doc["study_summaries"] = outer_first(doc["study_summaries"])
    return json.dumps(doc).encode()


def _adjust_page(body: bytes) -> bytes:
    return body.replace(b"</head>", PAGE_STYLE + b"</head>", 1)


def dashboard_app(app: Callable) -> Callable:
    """optuna-dashboard's WSGI ``app`` with the study list's order and the page's style rule
    of the module docstring; every other request passes through unchanged."""

    def adjusted(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET":
            return app(environ, start_response)
        if path == "/api/studies":
            adjust, kind = _adjust_studies, "application/json"
        elif path == "/dashboard" or path.startswith("/dashboard/"):
            adjust, kind = _adjust_page, "text/html"
            # the whole page every time: a cached copy of the page may lack the rule
            environ = {
                k: v
                for k, v in environ.items()
                if k not in ("HTTP_IF_MODIFIED_SINCE", "HTTP_IF_NONE_MATCH", "HTTP_RANGE")
            }
        else:
            return app(environ, start_response)
        status, headers, body = _call(app, environ)
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
        if status.startswith("200") and content_type.startswith(kind):
            body = adjust(body)
            drop = ("content-length", "etag", "last-modified", "accept-ranges")
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    return adjusted


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
    app = dashboard_app(wsgi(storage, artifact_store=artifact_store))
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
