"""No secret stored, none printed (issue 23, item 3): the storage password never reaches a
study attribute (checked on a real PostgreSQL server, every table of its database read as
text), an artifact file or a command's output; passwords with reserved characters are
parsed when percent-encoded and refused clearly, without a piece of them, when not.
"""

from __future__ import annotations

import importlib.util
import sys
from urllib.parse import quote

import pytest

from sigmatune.study.commands.cli import main
from sigmatune.study.storage import StorageError, parse_storage_url, redact_url

from .conftest import ROOT, RUN, one_paragraph, sigmatune, tiny_toml  # noqa: TID252

# Every character a password may hold that a URL reserves, and a run of plain ones.
SECRET = "Zq7@r:t/y#u%i?o&p=w+x[y]$!'*,;S3CR"
MARK = "Zq7"  # its first characters: a leaked fragment contains them or the rest below
FRAGMENTS = (MARK, "S3CR", "r:t/y", "u%i?o")


def _leaks(text: str) -> list[str]:
    return [f for f in FRAGMENTS if f in text]


def _pgserver():
    name = "sigmatune_tests_pgserver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "pgserver.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ------------------------------------------------------------------ parsing and redaction


@pytest.mark.parametrize(
    "template",
    [
        "postgresql+psycopg://alice:{pw}@db.example:5432/studies",
        "postgresql://alice:{pw}@db.example/studies",
        "mysql+pymysql://alice:{pw}@db.example/studies",
        "sqlite://alice:{pw}@host/x.db",
    ],
)
def test_a_percent_encoded_password_parses_and_is_redacted(template):
    url = template.format(pw=quote(SECRET, safe=""))
    loc = parse_storage_url(url)  # no error: the host is where it should be
    assert loc.kind in ("server", "sqlite")
    shown = redact_url(url)
    assert "***" in shown and "db.example" in shown or "host" in shown
    assert not _leaks(shown) and quote(SECRET, safe="") not in shown


@pytest.mark.parametrize("password", ["p@ss", "a@b@c", "Zq7@S3CR"])
def test_an_unescaped_at_in_the_password_is_refused_without_a_piece_of_it(password):
    url = f"postgresql+psycopg://alice:{password}@db.example/studies"
    with pytest.raises(StorageError) as info:
        parse_storage_url(url)
    message = str(info.value)
    assert "percent-encoded" in message and "%40" in message
    for piece in password.split("@"):
        assert f":{piece}" not in message and f"{piece}@" not in message, message
    assert "alice:***@db.example" in message  # the host it meant, the password hidden whole


def test_redaction_hides_a_password_with_unescaped_reserved_characters():
    for url in (
        f"postgresql://alice:{SECRET}@db.example/studies",
        "postgresql://alice:pa/ss@db.example/studies",
        "postgresql://alice:pa:ss@db.example/studies",
    ):
        shown = redact_url(url)
        assert shown.startswith("postgresql://alice:***@"), shown
        assert not _leaks(shown) and "pa/ss" not in shown and "pa:ss" not in shown


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--storage", "{url}"],
        ["status", "{url}"],
        ["status", "{url}", "--format", "json"],
        ["export", "--storage", "{url}"],
        ["report", "--storage", "{url}", "-o", "r.html"],
        ["dashboard", "{url}"],
    ],
)
def test_reading_commands_never_print_the_password(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite://alice:{quote(SECRET, safe='')}@host/{tmp_path}/missing.db"
    rc = main([a.format(url=url) for a in args])
    captured = capsys.readouterr()
    err = one_paragraph(rc, captured.err)
    assert "alice:***@host" in err
    assert not _leaks(captured.out + err) and quote(SECRET, safe="") not in err
    assert not (tmp_path / "missing.db").exists()


def test_run_never_prints_the_password_of_a_server_it_cannot_reach(in_tmp, capsys):
    from .conftest import snapshot  # noqa: TID252

    port = _pgserver().free_port()  # nothing listens there
    url = f"postgresql+psycopg://alice:{quote(SECRET, safe='')}@127.0.0.1:{port}/studies"
    before = snapshot(in_tmp)
    rc = main(["run", "config.toml", "--no-progress", "--storage", url])
    captured = capsys.readouterr()
    err = one_paragraph(rc, captured.err)
    assert "alice:***@127.0.0.1" in err and "nothing was written" in err
    assert not _leaks(captured.out + err) and quote(SECRET, safe="") not in captured.out + err
    assert snapshot(in_tmp) == before


# ------------------------------------------------------------------ on a real PostgreSQL


def _all_text(pg, database: str) -> str:
    """Every row of every table of ``database``, as JSON text."""
    with pg.connect(database) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        ]
        assert "studies" in tables and "trial_user_attributes" in tables
        parts = []
        for table in tables:
            rows = conn.execute(f'SELECT row_to_json(t)::text FROM "{table}" t').fetchall()
            parts += [r[0] for r in rows]
    return "\n".join(parts)


@pytest.mark.slow
def test_a_run_on_postgresql_stores_and_prints_no_password(tmp_path):
    pgserver = _pgserver()
    try:
        pgserver.find_postgres_bin()
    except pgserver.PostgresNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    with pgserver.postgres_server() as pg:
        database = pg.create_database("secrets")
        with pg.connect() as conn:  # a user whose password has every reserved character
            literal = SECRET.replace("'", "''")
            conn.execute(f"CREATE ROLE alice LOGIN PASSWORD '{literal}'")
            conn.execute(f'ALTER DATABASE "{database}" OWNER TO alice')
        url = f"postgresql+psycopg://alice:{quote(SECRET, safe='')}@{pg.host}:{pg.port}/{database}"
        config = tiny_toml(
            storage=f'"{url}"',
            artifact_dir='"art"',
            outer__outer_trials="1",
            inner__inner_trials="3",
        )
        (tmp_path / "config.toml").write_text(config)
        out = sigmatune(*RUN, cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        printed = out.stdout + out.stderr
        for args in (
            ["status", url],
            ["status", url, "--format", "json"],
            ["export", "--storage", url],
            ["report", "--storage", url, "-o", "r.html"],
        ):
            done = sigmatune(*args, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            printed += done.stdout + done.stderr
        stored = _all_text(pg, database)
        assert "sigmatune:config" in stored and "alice:***@" in stored  # the URL, redacted
        assert not _leaks(stored), _leaks(stored)
        assert quote(SECRET, safe="") not in stored
        assert not _leaks(printed) and quote(SECRET, safe="") not in printed
        files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "config.toml"]
        assert any(p.suffix == ".json" for p in files)  # the attached export, at least
        for path in files:
            data = path.read_bytes()
            assert MARK.encode() not in data and quote(SECRET, safe="").encode() not in data, path
