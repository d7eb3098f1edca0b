"""Workers as hosts: three network namespaces joined to this machine by veth pairs, PostgreSQL
listening on the host side, one ``sigmatune run`` per namespace on a shared artifact folder,
and one worker SIGKILLed in the middle of training.

What must hold afterwards: the killed worker's trial was failed by its stale heartbeat and
retried by another worker, which resumed its checkpoint from the shared folder; every outer
trial is accounted for, none is RUNNING or WAITING, no configuration ran to completion twice
beyond Optuna's one-trial overshoot per extra worker, and every inner study is complete.
Each worker holds at most ``WORKER_MAX_CONNECTIONS`` connections (measured per namespace,
from the server's pg_stat_activity). The same again with the workers going through Optuna's
gRPC storage proxy (``grpc://``), where heartbeats are sigmatune's own (the proxy has none)
and the workers hold no database connection at all.

Needs root (network namespaces) and iproute2; the namespaces and veth pairs are removed
afterwards, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from sigmatune.study import records
from sigmatune.study.commands.storage_proxy import PROXY_THREADS
from sigmatune.study.storage import WORKER_MAX_CONNECTIONS, StorageError, make_storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
OUTER_TRIALS = 4
INNER_TRIALS = 4
NFE = 3
TRAIN_NIMG = 131_072
CHECKPOINT_NIMG = 16_384
DEADLINE_S = 720  # the whole run, kill and retry included; then the test fails by itself
NAME = "cluster"


@dataclass(frozen=True)
class Host:
    """One namespace, joined to this machine by a veth pair on its own /30."""

    namespace: str
    host_address: str  # this machine's end (PostgreSQL listens here)
    address: str  # the namespace's end (the worker's address, as the server sees it)


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> None:
    cmd = ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")


def _free_subnet_block(n: int) -> int:
    """A third octet ``b`` such that 10.231.b..b+n-1 .0/30 are not in use here."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    taken = {int(m) for m in re.findall(r"10\.231\.(\d+)\.", used)}
    # each process starts at its own block (pids one apart, as test workers' are, n apart),
    # so two tests choosing at once (pytest-xdist) do not both take the first free one
    start = os.getpid() * n % (250 - n)
    for b in [*range(start, 250 - n), *range(start)]:
        if not taken & set(range(b, b + n)):
            return b
    raise RuntimeError("no free 10.231.x.0/30 block for the test namespaces")


@contextlib.contextmanager
def network_namespaces(n: int) -> Iterator[list[Host]]:
    """``n`` namespaces, each with a veth pair to this machine and a default route through
    it (so every worker reaches every host-side address); removed on exit."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CAP_NET_ADMIN)")
    if shutil.which("ip") is None:
        pytest.fail("the ip command (iproute2) is missing; `make install` installs it")
    tag = f"st{os.getpid() % 100_000}"
    block = _free_subnet_block(n)
    hosts: list[Host] = []
    try:
        for k in range(n):
            ns, near, far = f"{tag}-ns{k}", f"{tag}h{k}", f"{tag}n{k}"
            host = Host(ns, f"10.231.{block + k}.1", f"10.231.{block + k}.2")
            _ip("netns", "add", ns)
            hosts.append(host)
            _ip("link", "add", near, "type", "veth", "peer", "name", far)
            _ip("link", "set", far, "netns", ns)
            _ip("addr", "add", f"{host.host_address}/30", "dev", near)
            _ip("link", "set", near, "up")
            _ip("addr", "add", f"{host.address}/30", "dev", far, namespace=ns)
            _ip("link", "set", far, "up", namespace=ns)
            _ip("link", "set", "lo", "up", namespace=ns)
            _ip("route", "add", "default", "via", host.host_address, namespace=ns)
        yield hosts
    finally:
        for k, host in enumerate(hosts):
            _ip("netns", "del", host.namespace, check=False)  # takes its veth end along
            _ip("link", "del", f"{tag}h{k}", check=False)


def _worker_command(host: Host, url: str, artifacts: Path) -> list[str]:
    return [
        "ip", "netns", "exec", host.namespace,
        sys.executable, "-m", "sigmatune.study.commands.cli", "run",
        "--preset", "toy",
        "--storage", url,
        "--device", "cpu",
        "--set", f"artifact_dir={str(artifacts)!r}",
        "--set", f"name={NAME!r}",
        "--set", f"outer.outer_trials={OUTER_TRIALS}",
        "--set", 'outer.pruner="none"',
        "--set", f"train.train_nimg={TRAIN_NIMG}",
        "--set", f"train.checkpoint_nimg={CHECKPOINT_NIMG}",
        "--set", "train.batch_size=256",
        "--set", "inner.fid_num_images=256",
        "--set", "inner.batch_size=256",
        "--inner-trials", str(INNER_TRIALS),
        "--nfe", str(NFE),
        "--heartbeat-interval", "1",
        "--grace-period", "3",
    ]  # fmt: skip


def _training_trial(log: Path) -> int | None:
    """The outer trial this worker trains now (its log's last 'trial N train' line)."""
    found = re.findall(r"trial (\d+) train", log.read_text(errors="replace"))
    return int(found[-1]) if found else None


def _checkpointed_trials(artifacts: Path) -> dict[int, int]:
    """Trial number -> images of its newest checkpoint short of the end, from the shared
    folder's ``.../trial-NNNN/checkpoints/checkpoint-<nimg>.pt`` files."""
    found: dict[int, int] = {}
    for path in artifacts.rglob("checkpoint-*.pt"):
        trial = re.search(r"trial-(\d+)", str(path.parent.parent.name))
        nimg = int(path.stem.split("-")[1])
        if trial and nimg < TRAIN_NIMG:
            number = int(trial.group(1))
            found[number] = max(found.get(number, 0), nimg)
    return found


def _finished(trials: list[tuple[int, str, int | None]]) -> int:
    """Of ``(number, state, retry_of)``, those that count towards the budget: complete,
    pruned, or failed and not retried (as ``sigmatune run`` counts them)."""
    retried = {retry_of for _, _, retry_of in trials if retry_of is not None}
    return sum(
        state in ("COMPLETE", "PRUNED") or (state == "FAIL" and number not in retried)
        for number, state, _ in trials
    )


@pytest.mark.parametrize("via", ["postgresql", "grpc"])
def test_workers_on_three_hosts_share_the_study_and_a_killed_workers_trial_resumes_elsewhere(
    postgres_factory, free_port, tmp_path, via
):
    """``via``: the workers' storage URL: PostgreSQL itself, or Optuna's gRPC proxy (run as
    ``sigmatune storage-proxy`` does, on this machine) in front of it."""
    artifacts = tmp_path / "shared-artifacts"  # the shared folder every host mounts
    with (
        network_namespaces(WORKERS) as hosts,
        postgres_factory(("127.0.0.1", *(h.host_address for h in hosts))) as pg,
    ):
        database = pg.create_database("cluster")
        server = hosts[0].host_address  # this machine, as every namespace reaches it
        direct = make_storage(pg.url(database), heartbeat_interval=None)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        logs = [tmp_path / f"worker{k}.log" for k in range(WORKERS)]
        procs: list[subprocess.Popen] = []
        helpers: list[subprocess.Popen] = []
        try:
            if via == "grpc":
                port = free_port(server)
                code = (
                    "from sigmatune.study.commands.storage_proxy import serve_storage_proxy; "
                    f"serve_storage_proxy({pg.url(database, host=server)!r}, {server!r}, {port})"
                )
                helpers.append(
                    subprocess.Popen(
                        [sys.executable, "-c", code],
                        env=env,
                        stdout=(tmp_path / "proxy.log").open("w"),
                        stderr=subprocess.STDOUT,
                    )
                )
                url = f"grpc://{server}:{port}"
                # it answers: make_storage waits 10 s, and the proxy's start (its imports)
                # can take longer on a loaded machine, so wait again while it is alive
                for attempt in range(12):
                    try:
                        make_storage(url, heartbeat_interval=None).close()
                        break
                    except StorageError:
                        proxy_log = (tmp_path / "proxy.log").read_text()
                        if helpers[-1].poll() is not None or attempt == 11:
                            raise AssertionError(f"no answer:\n{proxy_log}") from None
            else:
                # every worker runs the same command, with the same URL (through its veth)
                url = pg.url(database, host=server)
            for k, host in enumerate(hosts):
                (tmp_path / f"host{k}").mkdir()
                procs.append(
                    subprocess.Popen(
                        _worker_command(host, url, artifacts),
                        cwd=tmp_path / f"host{k}",
                        env=env,
                        stdout=logs[k].open("w"),
                        stderr=subprocess.STDOUT,
                    )
                )
            deadline = time.monotonic() + DEADLINE_S
            peaks: dict[str, int] = {h.address: 0 for h in hosts}

            def sample_connections() -> None:
                with pg.connect() as conn:
                    rows = conn.execute(
                        "SELECT host(client_addr), count(*) FROM pg_stat_activity "
                        "WHERE datname = %s GROUP BY 1",
                        (database,),
                    ).fetchall()
                for addr, count in rows:
                    peaks[addr] = max(peaks.get(addr, 0), int(count))

            def tail() -> str:
                return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)

            # 1. kill a worker once the trial it trains has a checkpoint in the shared folder
            #    before its last one: in the middle of training
            victim, killed_trial = None, None
            while victim is None:
                assert time.monotonic() < deadline, "no worker reached a checkpoint\n" + tail()
                for k, p in enumerate(procs):
                    assert p.poll() is None, f"worker {k} ended before the kill\n" + tail()
                sample_connections()
                midway = _checkpointed_trials(artifacts)
                for k in range(WORKERS):
                    if _training_trial(logs[k]) in midway:
                        victim, killed_trial = k, _training_trial(logs[k])
                        break
                time.sleep(0.1)
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            saved_nimg = _checkpointed_trials(artifacts).get(killed_trial)
            assert saved_nimg, "the killed trial left no checkpoint in the shared folder"

            # 2. the other workers finish the study
            for k, p in enumerate(procs):
                while p.poll() is None:
                    assert time.monotonic() < deadline, "the workers did not finish\n" + tail()
                    sample_connections()
                    time.sleep(0.5)
                if k != victim:
                    text = logs[k].read_text()
                    assert p.returncode == 0, tail()
                    assert "Traceback" not in text, tail()
        finally:
            for p in procs + helpers:
                if p.poll() is None:
                    p.kill()
                    p.wait()

        # 3. what is stored
        study = records.read_study(direct, NAME)
        trials = {t.number: t for t in study.trials}
        states = {n: t.state for n, t in trials.items()}
        assert not [n for n, s in states.items() if s in ("RUNNING", "WAITING")], states
        killed = trials[killed_trial]
        assert killed.state == "FAIL", states
        retries = [t for t in trials.values() if t.retry_of == killed_trial]
        assert len(retries) == 1, states
        (retry,) = retries
        assert retry.state == "COMPLETE", states
        assert retry.original_trial == killed.original_trial
        # the retry resumed the killed trial's checkpoint, from the shared folder
        assert retry.train["resumed_from_nimg"] == saved_nimg, (retry.train, saved_nimg)
        assert retry.train["nimg_this_process"] < TRAIN_NIMG, retry.train

        # every trial accounted for: each is an original or the retry of one, and every
        # failed original was retried; the budget met, overshot by at most one per extra worker
        originals = {t.original_trial for t in trials.values()}
        assert originals == {n for n, t in trials.items() if t.retry_of is None}
        for t in trials.values():
            if t.state == "FAIL":
                assert any(r.retry_of == t.number for r in trials.values()), states
        finished = _finished([(t.number, t.state, t.retry_of) for t in study.trials])
        assert OUTER_TRIALS <= finished <= OUTER_TRIALS + WORKERS - 1, states
        complete = [t for t in trials.values() if t.state == "COMPLETE"]
        done_originals = [t.original_trial for t in complete]
        assert len(done_originals) == len(set(done_originals)), "a trial completed twice"

        # every inner study complete
        for t in complete:
            assert set(t.inner) == {NFE}
            inner = optuna.load_study(study_name=t.inner[NFE].study_name, storage=direct)
            rows = [
                (x.number, x.state.name, x.system_attrs.get("failed_trial"))
                for x in inner.get_trials(deepcopy=False)
            ]
            assert not [r for r in rows if r[1] in ("RUNNING", "WAITING")], rows
            assert _finished(rows) >= INNER_TRIALS, rows

        # connections to the database, per client address
        workers = [peaks[h.address] for h in hosts]
        print(
            f"\n{via}: killed the worker on {hosts[victim].namespace} training trial "
            f"{killed_trial}; retried as trial {retry.number}, resumed from "
            f"{retry.train['resumed_from_nimg']} images; states {states}; peak database "
            f"connections per client address {peaks}"
        )
        if via == "grpc":  # the workers hold none, the proxy a few
            assert workers == [0] * WORKERS, peaks
            assert 1 <= peaks[server] <= PROXY_THREADS, peaks
        else:
            assert all(1 <= n <= WORKER_MAX_CONNECTIONS for n in workers), peaks
