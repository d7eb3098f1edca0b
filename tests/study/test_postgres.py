"""study.storage and study.commands.storage_proxy on a real PostgreSQL server
(tests/pgserver.py: Debian's binaries, password authentication, a fresh database per test):
postgresql+psycopg URLs, heartbeats by the server's clock, bad input, connections per worker,
and Optuna's gRPC storage proxy with the heartbeats sigmatune adds to it."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sigmatune.study import optuna_adapter
from sigmatune.study import storage as storage_module
from sigmatune.study.commands import storage_proxy as proxy_module
from sigmatune.study.optuna_adapter import HeartbeatGrpcStorageProxy
from sigmatune.study.records import HEARTBEAT as GRPC_HEARTBEAT_ATTR
from sigmatune.study.storage import WORKER_MAX_CONNECTIONS, StorageError, make_storage

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used"),
]


def _tables(postgres, database: str) -> list[str]:
    with postgres.connect(database) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return sorted(r[0] for r in rows)


def _databases(postgres) -> list[str]:
    with postgres.connect() as conn:
        return sorted(r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall())


# ------------------------------------------------------------------------------ PostgreSQL


def test_postgresql_psycopg_url_stores_a_study_that_a_bare_postgresql_url_reads(
    postgres, pg_database
):
    storage = make_storage(postgres.url(pg_database))
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.engine.dialect.driver == "psycopg"  # psycopg 3
    pool = storage.engine.pool  # a small pool: many workers fit in max_connections
    assert (pool.size(), pool._max_overflow) == (WORKER_MAX_CONNECTIONS, 0)
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr("sigmatune:role", "outer")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)

    bare = make_storage(postgres.url(pg_database, driver=""))  # postgresql://: psycopg 3 too
    assert bare.engine.dialect.driver == "psycopg"
    again = optuna.load_study(study_name="s", storage=bare)
    assert [t.state for t in again.trials] == [TrialState.COMPLETE] * 3
    assert again.user_attrs == {"sigmatune:role": "outer"}
    assert again.best_value == pytest.approx(min(t.value for t in study.trials))


def test_workers_opening_one_new_database_at_once_all_get_the_storage(postgres, race):
    """`run --workers N` or N hosts started together on a new database race to create its
    tables; PostgreSQL tells the loser DuplicateTable (a ProgrammingError) or a unique
    violation in its catalogue. Each is retried, never reported, and every table is made."""
    opener = functools.partial(make_storage, heartbeat_interval=1)
    for round_ in range(3):  # the race is timing-dependent: a few fresh databases
        database = postgres.create_database(f"race_{round_}_{len(postgres.databases)}")
        errors = race(opener, (postgres.url(database),), 6)
        assert errors == [""] * 6, "\n".join(errors)
        assert {"studies", "trials", "version_info", "alembic_version"} <= set(
            _tables(postgres, database)
        )


def test_a_stale_heartbeat_by_the_servers_clock_fails_and_retries_the_trial(postgres, pg_database):
    storage = make_storage(
        postgres.url(pg_database), heartbeat_interval=5, grace_period=10, max_retry=2
    )
    study = optuna.create_study(study_name="hb", storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    optuna.storages.fail_stale_trials(study)  # a live trial is left alone
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    with postgres.connect(pg_database) as conn:  # its process "died" a minute ago
        conn.execute("UPDATE trial_heartbeats SET heartbeat = now() - interval '60 seconds'")
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["failed_trial"] == 0


@pytest.mark.parametrize("fault", ["password", "database", "port"])
def test_a_bad_server_url_is_one_redacted_paragraph_and_writes_nothing(
    postgres, pg_database, fault, free_port
):
    wrong = "not-the-Pa55word"
    url = {
        "password": postgres.url(pg_database, password=wrong),
        "database": postgres.url("no_such_database"),
        "port": f"postgresql+psycopg://{postgres.user}:{wrong}@127.0.0.1:{free_port()}/db",
    }[fault]
    databases = _databases(postgres)
    with pytest.raises(StorageError) as info:
        make_storage(url)
    message = str(info.value)
    expected = {
        "password": 'password authentication failed for user "sigmatune"',
        "database": 'database "no_such_database" does not exist',
        "port": "Connection refused",
    }[fault]
    assert expected in message
    assert "\n" not in message and "Traceback" not in message and "[SQL:" not in message
    assert wrong not in message and postgres.password not in message  # redacted
    assert repr(url.replace(wrong, "***").replace(postgres.password, "***")) in message
    assert "nothing was written" in message and "accepted storage URLs" not in message
    assert _tables(postgres, pg_database) == []  # no Optuna table was created
    assert _databases(postgres) == databases


def test_an_unreachable_server_fails_within_the_connect_timeout(monkeypatch):
    monkeypatch.setattr(storage_module, "SERVER_CONNECT_TIMEOUT_S", 2)
    url = "postgresql+psycopg://u:secret@198.51.100.1:5432/db"  # TEST-NET-2: nobody answers
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        make_storage(url)
    assert time.monotonic() - t0 < 15
    assert "'postgresql+psycopg://u:***@198.51.100.1:5432/db'" in str(info.value)
    assert "secret" not in str(info.value)


WORKER = """
import sys, threading, time
import optuna
from sigmatune.study.storage import make_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
storage = make_storage(sys.argv[1], heartbeat_interval=1, grace_period=30)
study = optuna.create_study(study_name="w", storage=storage, load_if_exists=True)

def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    end = time.monotonic() + 2.5  # writes while the heartbeat thread beats
    for i in range(10_000):
        trial.set_user_attr(f"k{i % 20}", i)
        trial.report(x * i, i)
        if time.monotonic() > end:
            break
    return x

study.optimize(objective, n_trials=2)
print("done")
"""


@pytest.mark.timeout(180)
def test_a_worker_holds_at_most_worker_max_connections(postgres, pg_database, run_python):
    """One and three worker processes writing a trial's attrs while Optuna's heartbeat thread
    beats: connections to the database, sampled from pg_stat_activity."""
    url = postgres.url(pg_database)
    # the tables first (no creation race here), and this process's connection closed
    make_storage(url, heartbeat_interval=None).engine.dispose()
    measured = {}
    for n in (1, 3):
        procs = [run_python(WORKER, url) for _ in range(n)]
        peak = 0
        while any(p.poll() is None for p in procs):
            peak = max(peak, postgres.connections(pg_database))
            time.sleep(0.02)
        outs = [p.communicate()[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * n, outs
        measured[n] = peak
    print(f"peak connections to the database: {measured} (workers: connections)")
    assert 1 <= measured[1] <= WORKER_MAX_CONNECTIONS
    assert measured[3] <= 3 * WORKER_MAX_CONNECTIONS


# ------------------------------------------------------------------------- the gRPC proxy


CLIENT = """
import sys
import optuna
from sigmatune.study.storage import make_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
url, worker = sys.argv[1], int(sys.argv[2])
study = optuna.create_study(
    study_name="g", storage=make_storage(url, heartbeat_interval=None), load_if_exists=True
)
for _ in range(10):
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("worker", worker)
    trial.report(x, 1)
    study.tell(trial, x)
print("done")
"""


@pytest.mark.timeout(180)
def test_two_processes_create_ask_and_tell_through_the_grpc_proxy(
    postgres, pg_database, grpc_proxy, tmp_path, run_python
):
    # an enqueued trial and an artifact link (a trial system attr) go through the proxy too
    client = make_storage(grpc_proxy, heartbeat_interval=None)
    assert isinstance(client, optuna.storages.GrpcStorageProxy)
    study = optuna.create_study(study_name="g", storage=client)
    study.enqueue_trial({"x": 0.25}, user_attrs={"baseline": "fixed"})
    procs = [run_python(CLIENT, grpc_proxy, str(k)) for k in (1, 2)]
    outs = [p.communicate(timeout=150)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    # read back from PostgreSQL itself, not through the proxy
    direct = optuna.load_study(
        study_name="g", storage=make_storage(postgres.url(pg_database), heartbeat_interval=None)
    )
    trials = direct.get_trials()
    assert [t.number for t in trials] == list(range(20))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["worker"] for t in trials) == [1] * 10 + [2] * 10
    assert all(t.intermediate_values == {1: t.value} for t in trials)
    fixed = [t for t in trials if t.user_attrs.get("baseline") == "fixed"]
    assert len(fixed) == 1 and fixed[0].params == {"x": 0.25}

    # a running trial's artifact link is a trial system attr, set through the proxy
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path)
    payload = tmp_path / "model.pt"
    payload.write_bytes(b"weights")
    trial = study.ask()
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=str(payload), study_or_trial=trial
    )
    study.tell(trial, 0.5)
    assert f"artifacts:{artifact_id}" in direct.get_trials()[20].system_attrs
    client.close()


HEARTBEAT_WORKER = """
import sys, time
import optuna
from sigmatune.study.storage import make_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
storage = make_storage(sys.argv[1], heartbeat_interval=1, grace_period=2)
study = optuna.create_study(study_name="k", storage=storage, load_if_exists=True)
study.optimize(lambda t: time.sleep(600) or t.suggest_float("x", 0, 1), n_trials=1)
"""


@pytest.mark.timeout(180)
def test_through_the_proxy_a_killed_workers_trial_is_failed_by_heartbeat_and_retried(
    grpc_proxy, run_python
):
    storage = make_storage(grpc_proxy, heartbeat_interval=1, grace_period=2)
    assert isinstance(storage, HeartbeatGrpcStorageProxy)
    study = optuna.create_study(study_name="k", storage=storage)
    worker = run_python(HEARTBEAT_WORKER, grpc_proxy)
    try:
        t0 = time.monotonic()
        while not study.get_trials(states=(TrialState.RUNNING,)):
            assert worker.poll() is None and time.monotonic() - t0 < 60
            time.sleep(0.1)
        # alive: it beats through the proxy, so after more than a grace period it is not stale
        time.sleep(4)
        optuna.storages.fail_stale_trials(study)
        (running,) = study.get_trials()
        assert running.state == TrialState.RUNNING
        beat = running.system_attrs[GRPC_HEARTBEAT_ATTR]
        assert beat[0] == running._trial_id and time.time() - beat[1] < 2.5
    finally:
        worker.kill()
        worker.wait()
    time.sleep(3)  # > grace period since its last heartbeat
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["failed_trial"] == 0
    # the retry carries the dead trial's heartbeat attr, but it is not the retry's own: not
    # stale before the retry runs, and this process runs it
    study.optimize(lambda t: 1.0, n_trials=1)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def test_through_the_proxy_a_trial_that_never_beat_is_failed_after_the_orphan_grace(
    grpc_proxy, monkeypatch
):
    storage = make_storage(grpc_proxy, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="o", storage=storage)
    study.ask()  # RUNNING, never beats (as a worker killed inside study.ask())
    optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]  # too young
    monkeypatch.setattr(optuna_adapter, "ORPHAN_GRACE_FACTOR", 0)
    time.sleep(1.1)
    optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_the_proxy_refuses_a_taken_port_a_journal_and_a_bad_password_before_serving(
    postgres, pg_database, tmp_path, free_port
):
    url = postgres.url(pg_database)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(StorageError, match=r"127\.0\.0\.1:\d+: the port is already in use"):
            proxy_module.serve_storage_proxy(url, "127.0.0.1", port, log=lambda _m: None)
    free = free_port()
    for bad_port in (0, 70_000):
        with pytest.raises(StorageError, match="port must be from 1 to 65535"):
            proxy_module.serve_storage_proxy(url, "127.0.0.1", bad_port)
    with pytest.raises(StorageError, match="threads must be at least 1, but got threads=0"):
        proxy_module.serve_storage_proxy(url, "127.0.0.1", free, threads=0)
    with pytest.raises(StorageError, match="not one of this machine's"):
        proxy_module.serve_storage_proxy(url, "198.51.100.1", free)
    journal = tmp_path / "j.log"
    with pytest.raises(StorageError, match="journal storage, and Optuna's proxy serves"):
        proxy_module.serve_storage_proxy(f"journal:{journal}", "127.0.0.1", free)
    assert not journal.exists()
    wrong = postgres.url(pg_database, password="nope-nope")
    with pytest.raises(StorageError) as info:
        proxy_module.serve_storage_proxy(wrong, "127.0.0.1", free)
    assert "password authentication failed" in str(info.value)
    assert "nope-nope" not in str(info.value)
    assert _tables(postgres, pg_database) == []


def test_the_proxy_prints_where_workers_connect(postgres, pg_database, free_port, run_python):
    """The first line a user sees: the database (redacted) and the worker URL."""
    port = free_port()
    url = postgres.url(pg_database)
    code = textwrap.dedent(
        f"""
        import threading, os
        from sigmatune.study.commands.storage_proxy import serve_storage_proxy
        threading.Timer(3, lambda: os._exit(0)).start()
        serve_storage_proxy({url!r}, "0.0.0.0", {port})
        """
    )
    out = run_python(code).communicate(timeout=60)[0]
    assert "gRPC storage proxy for postgresql+psycopg://sigmatune:***@" in out
    assert f"--storage grpc://THIS_MACHINE:{port}" in out
    assert postgres.password not in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_storage_benchmark_runs_and_loses_nothing(tmp_path):
    """benchmarks/storage_overhead.py at a tiny size: every backend with 2 workers, its JSON
    with the machine, no storage error and no trial lost."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "storage_overhead.py"
    out = tmp_path / "so.json"
    args = ["--trials", "3", "--workers", "2", "--backends", "sqlite,postgres,grpc"]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert {"cpu", "cpu_count", "python"} <= set(result["machine"])
    assert result["writes_per_trial"] == 20
    rows = {(r["backend"], r["workers"]) for r in result["rows"]}
    assert rows == {("sqlite", 2), ("postgres", 2), ("grpc", 2)}
    for r in result["rows"]:
        assert (r["errors"], r["trials_lost"], r["left_running"]) == (0, 0, 0), r
        assert r["told"] == r["stored_complete"] == 6 and r["ms_per_trial_median"] > 0
    assert "| storage | workers | ms/trial (median)" in done.stdout
