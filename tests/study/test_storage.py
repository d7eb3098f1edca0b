"""study.storage: SQLite (default and explicit), journal files, errors, artifact store."""

from __future__ import annotations

import functools
import sqlite3

import optuna
import pytest

from sigmatune.study import storage as storage_module
from sigmatune.study.storage import (
    GRPC_NOTE,
    JOURNAL_NOTE,
    StorageError,
    artifact_dir_for,
    artifact_store_for,
    check_storage_exists,
    make_storage,
    parse_storage_url,
    redact_url,
    storage_capabilities,
)


def _roundtrip(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)


def test_default_url_creates_sigmatune_db_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = make_storage()
    assert isinstance(storage, optuna.storages.RDBStorage)
    _roundtrip(storage)
    assert (tmp_path / "sigmatune.db").is_file()
    again = optuna.load_study(study_name="s", storage=make_storage("sqlite:///sigmatune.db"))
    assert len(again.trials) == 2


@pytest.mark.parametrize("form", ["sqlite:///{p}", "{p}"])
def test_explicit_sqlite_url_or_bare_db_path(tmp_path, form):
    path = tmp_path / "runs.db"
    storage = make_storage(form.format(p=path))
    _roundtrip(storage)
    assert path.is_file()
    # the lock timeout reaches SQLite: other writers are waited for, not failed
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_heartbeat_retries_a_stale_trial(tmp_path):
    path = tmp_path / "hb.db"
    storage = make_storage(f"sqlite:///{path}", heartbeat_interval=5, grace_period=10, max_retry=2)
    study = optuna.create_study(study_name="hb", storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    optuna.storages.fail_stale_trials(study)  # a live trial is left alone
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.RUNNING]
    # the process "died" a minute ago: its last heartbeat is older than the grace period
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-60 seconds')")
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]


def test_heartbeats_on_by_default_and_off_when_disabled():
    assert make_storage("sqlite:///:memory:").get_heartbeat_interval() == 10
    disabled = make_storage("sqlite:///:memory:", heartbeat_interval=None)
    assert disabled.get_heartbeat_interval() is None


@pytest.mark.parametrize("form", ["journal:{p}", "{p}"])
def test_journal_file_storage(tmp_path, form):
    path = tmp_path / "study.log"
    storage = make_storage(form.format(p=path))
    assert isinstance(storage, optuna.storages.JournalStorage)
    _roundtrip(storage)
    reopened = optuna.load_study(study_name="s", storage=make_storage(form.format(p=path)))
    assert len(reopened.trials) == 2


def test_jsonl_suffix_is_a_journal(tmp_path):
    assert parse_storage_url(str(tmp_path / "a.jsonl")).kind == "journal"


@pytest.mark.parametrize(
    "url, fault",
    [
        ("results", "neither a URL with a scheme"),
        ("redis://localhost:6379", "scheme 'redis' is not supported"),
        ("sqlite:///{tmp}/no/such/dir/x.db", "does not exist"),
        ("{tmp}/notadb.db", "is not a SQLite database"),
        ("journal:", "needs a file path"),
    ],
)
def test_bad_url_is_one_paragraph_without_traceback_and_creates_nothing(tmp_path, url, fault):
    (tmp_path / "notadb.db").write_text("just text")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    url = url.format(tmp=tmp_path)
    with pytest.raises(StorageError) as info:
        make_storage(url)
    message = str(info.value)
    assert "\n" not in message
    assert repr(url) in message and fault in message
    assert "accepted storage URLs: sqlite:///" in message
    for leak in ("Traceback", "sqlalche.me", "[SQL:", "Background on this error"):
        assert leak not in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_check_storage_exists_refuses_a_missing_file_and_creates_nothing(tmp_path):
    for url in (f"sqlite:///{tmp_path / 'missing.db'}", f"journal:{tmp_path / 'missing.log'}"):
        with pytest.raises(StorageError, match=r"no study database at .*missing"):
            check_storage_exists(url)
    with pytest.raises(StorageError, match="in-memory"):
        check_storage_exists("sqlite:///:memory:")
    assert list(tmp_path.iterdir()) == []
    make_storage(f"sqlite:///{tmp_path / 'there.db'}")
    check_storage_exists(f"sqlite:///{tmp_path / 'there.db'}")


def test_artifact_store_beside_the_database(tmp_path):
    db = tmp_path / "runs" / "exp.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    assert artifact_dir_for(url) == tmp_path / "runs" / "exp-artifacts"
    assert not (tmp_path / "runs" / "exp-artifacts").exists()  # only created on demand
    store, path = artifact_store_for(url)
    assert path == tmp_path / "runs" / "exp-artifacts" and path.is_dir()

    study = optuna.create_study(storage=make_storage(url, heartbeat_interval=None))
    trial = study.ask()
    payload = tmp_path / "ckpt.bin"
    payload.write_bytes(b"weights")
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=str(payload), study_or_trial=trial
    )
    assert (path / artifact_id).read_bytes() == b"weights"


def test_artifact_dir_given_or_for_servers(tmp_path):
    assert artifact_dir_for("sqlite:///x.db", tmp_path / "a") == tmp_path / "a"
    assert str(artifact_dir_for("postgresql://u@h/db")) == "sigmatune-artifacts"
    assert artifact_dir_for(f"journal:{tmp_path / 'j.log'}") == tmp_path / "j-artifacts"


def test_processes_creating_one_new_sqlite_file_at_once_all_get_the_storage(tmp_path, race):
    """Two `sigmatune run` started together race to create the tables of a new SQLite file;
    the loser's "already exists" / unique-constraint error is retried, not reported."""
    opener = functools.partial(make_storage, heartbeat_interval=1)
    for round_ in range(3):  # the race is timing-dependent: a few fresh files
        path = tmp_path / f"race{round_}.db"
        errors = race(opener, (f"sqlite:///{path}",), 6)
        assert errors == [""] * 6, "\n".join(errors)
        assert {"studies", "trials", "version_info"} <= _sqlite_tables(path)


def _sqlite_tables(path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def test_a_schema_half_created_by_another_run_is_not_another_programs_database(tmp_path):
    """What the loser of that race sees when it checks the file between two CREATE TABLEs:
    some of Optuna's tables and not yet the others. A creating command goes on (and gets the
    storage); a reading one finds no study; one foreign table still makes it another
    program's database."""
    half = tmp_path / "half.db"
    conn = sqlite3.connect(half)
    conn.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY)")
    conn.close()
    loc = parse_storage_url(f"sqlite:///{half}")
    storage_module.check_sqlite_file(loc, create=True)  # no error
    with pytest.raises(StorageError, match="holds no study"):
        storage_module.check_sqlite_file(loc, create=False)

    mixed = tmp_path / "mixed.db"
    conn = sqlite3.connect(mixed)
    conn.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(StorageError, match="another program's tables"):
        storage_module.check_sqlite_file(parse_storage_url(f"sqlite:///{mixed}"), create=True)


# ----------------------------------------------------- servers and the gRPC proxy, by URL alone
# (on a real PostgreSQL server and proxy: tests/study/test_postgres.py)


@pytest.mark.parametrize(
    "url, redacted",
    [
        (
            "postgresql+psycopg://u:s3cret@db.example:5432/x",
            "postgresql+psycopg://u:***@db.example:5432/x",
        ),
        ("mysql+pymysql://root:pw@h/db", "mysql+pymysql://root:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),  # no password: as it is
        ("sqlite:///a@b.db", "sqlite:///a@b.db"),
        ("grpc://h:13000", "grpc://h:13000"),
    ],
)
def test_redact_url_hides_only_the_password(url, redacted):
    assert redact_url(url) == redacted


def test_a_url_without_a_reachable_server_names_it_redacted_in_one_paragraph():
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/db"  # nothing listens on port 1
    with pytest.raises(StorageError) as info:
        make_storage(url)
    message = str(info.value)
    assert "'postgresql+psycopg://u:***@127.0.0.1:1/db'" in message
    assert "s3cret" not in message and "\n" not in message
    assert "Connection refused" in message and "nothing was written" in message


def test_a_missing_driver_names_psycopg_3_never_psycopg2():
    with pytest.raises(StorageError) as info:
        make_storage("postgresql+psycopg2://u:pw@127.0.0.1:1/db")  # psycopg2 is no dependency
    message = str(info.value)
    assert 'pip install "psycopg[binary]"' in message and "sigmatune[postgres]" in message
    assert "psycopg2-binary" not in message and ":pw@" not in message


@pytest.mark.parametrize(
    "url, host, port",
    [
        ("grpc://127.0.0.1:13001", "127.0.0.1", 13001),
        ("grpc://proxy.cluster", "proxy.cluster", 13000),  # Optuna's default port
        ("grpc://[::1]:5000", "::1", 5000),
    ],
)
def test_grpc_urls_name_the_proxy(url, host, port):
    loc = parse_storage_url(url)
    assert (loc.kind, loc.host, loc.port) == ("grpc", host, port)


@pytest.mark.parametrize(
    "url, fault",
    [("grpc://h:99999", "port must be a number"), ("grpc://h:1/db", "grpc://HOST:PORT, nothing")],
)
def test_malformed_grpc_urls_are_one_paragraph(url, fault):
    with pytest.raises(StorageError, match=fault):
        parse_storage_url(url)


def test_a_proxy_that_is_down_is_one_paragraph_within_the_timeout(monkeypatch):
    import socket
    import time

    monkeypatch.setattr(storage_module, "SERVER_CONNECT_TIMEOUT_S", 1)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        make_storage(f"grpc://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert f"no gRPC storage proxy answers at 127.0.0.1:{port}" in message
    assert f"sigmatune storage-proxy --storage DATABASE_URL --host 127.0.0.1 --port {port}" in (
        message
    )
    assert "\n" not in message


def test_storage_capabilities_say_what_heartbeats_each_storage_has(tmp_path):
    sqlite = storage_capabilities(f"sqlite:///{tmp_path / 'a.db'}")
    assert (sqlite.heartbeats, sqlite.many_machines, sqlite.note) == ("server", False, "")
    server = storage_capabilities("postgresql+psycopg://u:p@h/db")
    assert (server.heartbeats, server.many_machines, server.note) == ("server", True, "")
    proxy = storage_capabilities("grpc://h:13000")
    assert (proxy.heartbeats, proxy.many_machines, proxy.note) == ("workers", True, GRPC_NOTE)
    assert "clocks" in GRPC_NOTE and "PostgreSQL directly" in GRPC_NOTE
    journal = storage_capabilities(f"journal:{tmp_path / 'j.log'}")
    assert (journal.heartbeats, journal.note) == ("none", JOURNAL_NOTE)
    assert list(tmp_path.iterdir()) == []  # nothing opened or created


def test_an_artifact_folder_that_cannot_be_made_names_the_storage_without_its_password(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError) as info:
        artifact_store_for("postgresql+psycopg://u:s3cret@h/db", blocker / "artifacts")
    assert "'postgresql+psycopg://u:***@h/db'" in str(info.value)
    assert "s3cret" not in str(info.value)
