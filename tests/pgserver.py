"""A throwaway PostgreSQL server for tests and benchmarks, from Debian's ``postgresql`` binaries.

``postgres_server()`` runs ``initdb`` and ``pg_ctl start`` in a new temporary folder, listening
on a free port of 127.0.0.1 (or the addresses given), with password authentication
(``scram-sha-256``) for one superuser, and stops the server and removes the folder when the
``with`` block ends, also on failure. PostgreSQL refuses to run as root, so as root the server
runs as the unprivileged ``postgres`` user of the Debian package (or ``nobody``), which owns
the data folder. Nothing is mocked: a missing PostgreSQL is an error that says how to install
it (``make install``).

    with postgres_server() as pg:
        url = pg.url(pg.create_database("study"))  # postgresql+psycopg://USER:PW@HOST:PORT/study
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PostgresNotInstalled", "PostgresServer", "find_postgres_bin", "postgres_server"]

SUPERUSER = "sigmatune"
PASSWORD = "pw-sigma-7"  # URL-safe, so URLs need no escaping
START_TIMEOUT_S = 60
INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found under "
    "/usr/lib/postgresql/*/bin or on PATH; `make install` installs Debian's postgresql package "
    "(as root), or install it yourself: apt-get install postgresql"
)


class PostgresNotInstalled(RuntimeError):
    """PostgreSQL's server binaries are not on this machine."""


def find_postgres_bin() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian's newest version first)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise PostgresNotInstalled(INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (this user) unless we are root, whom PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresNotInstalled("running as root, but neither a 'postgres' nor a 'nobody' user")


@dataclass
class PostgresServer:
    """A running server: where it listens, its superuser and its folder."""

    hosts: tuple[str, ...]
    port: int
    user: str
    password: str
    directory: Path
    bin_dir: Path
    max_connections: int
    databases: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.hosts[0]

    def url(
        self,
        database: str = "postgres",
        *,
        host: str | None = None,
        password: str | None = None,
        driver: str = "psycopg",
    ) -> str:
        """A SQLAlchemy URL (``postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE``)."""
        pw = self.password if password is None else password
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{pw}@{host or self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """A psycopg connection as the superuser, in autocommit mode."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its name."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return name

    def connections(self, database: str) -> int:
        """Client connections open to ``database`` now (pg_stat_activity)."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()",
                (database,),
            ).fetchone()
        return int(row[0])

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def _run_as(
    args: Sequence[str], user: pwd.struct_passwd | None, *, cwd: Path, timeout: float
) -> subprocess.CompletedProcess:
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


# Password (scram-sha-256) for every TCP client, from any address (the tests' network
# namespaces too); the server's own socket, in its private folder, trusts its owner.
HBA = """local all all trust
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
"""


@contextlib.contextmanager
def postgres_server(
    hosts: Sequence[str] = ("127.0.0.1",),
    *,
    port: int | None = None,
    max_connections: int = 100,
    settings: dict[str, str] | None = None,
) -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL server listening on ``hosts`` (stopped and removed after)."""
    bin_dir = find_postgres_bin()
    user = _server_user()
    # Not under pytest's tmp_path: that is private to root, and the server runs as another user.
    directory = Path(tempfile.mkdtemp(prefix="sigmatune-pg-"))
    started = False
    try:
        data = directory / "data"
        pwfile = directory / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if user is not None:
            os.chown(directory, user.pw_uid, user.pw_gid)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        os.chmod(pwfile, 0o600)
        init = _run_as(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ],
            user,
            cwd=directory,
            timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        (data / "pg_hba.conf").write_text(HBA)
        options = {
            "listen_addresses": ",".join(hosts),
            "unix_socket_directories": str(directory),
            "max_connections": str(max_connections),
            "fsync": "off",  # a throwaway server: durability is not what is tested
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            **(settings or {}),
        }
        conf = "".join(f"{k} = '{v}'\n" for k, v in options.items())
        with (data / "postgresql.conf").open("a") as f:
            f.write("\n# sigmatune test server\n" + conf)
        for attempt in range(5):
            chosen = port if port is not None else free_port(hosts[0])
            with (data / "postgresql.auto.conf").open("w") as f:
                f.write(f"port = {chosen}\n")
            start = _run_as(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(directory / "server.log"),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                ],
                user,
                cwd=directory,
                timeout=START_TIMEOUT_S + 30,
            )
            if start.returncode == 0:
                started = True
                break
            log = (directory / "server.log").read_text(errors="replace")
            if port is None and "could not bind" in log and attempt < 4:
                continue  # another process took the port in between: another one
            raise RuntimeError(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log}")
        yield PostgresServer(
            hosts=tuple(hosts),
            port=chosen,
            user=SUPERUSER,
            password=PASSWORD,
            directory=directory,
            bin_dir=bin_dir,
            max_connections=max_connections,
        )
    finally:
        if started:
            _run_as(
                [str(bin_dir / "pg_ctl"), "-D", str(directory / "data"), "-m", "immediate", "stop"],
                user,
                cwd=directory,
                timeout=60,
            )
        shutil.rmtree(directory, ignore_errors=True)
