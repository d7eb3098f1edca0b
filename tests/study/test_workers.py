"""study.commands.workers: ``sigmatune run --workers N`` / ``--devices LIST``, one worker
process per device on one machine, all on one storage.

The parent's contract is tested with small stand-in workers (a few lines of Python): every
output line prefixed with its worker's index, the exit code of a failed worker passed on,
SIGTERM and Ctrl-C (SIGINT) forwarded to every worker, and workers that end by themselves when
their parent is SIGKILLed. Then ``sigmatune run --workers 2`` itself, on CPU.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sigmatune.study.commands import workers
from sigmatune.study.commands.workers import exit_code, supervise, worker_devices
from sigmatune.study.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("n", "devices", "device", "gpus", "expected"),
    [
        (2, None, "auto", 0, ["cpu", "cpu"]),
        (2, None, "cpu", 4, ["cpu", "cpu"]),
        (3, None, "auto", 2, ["cuda:0", "cuda:1", "cuda:0"]),
        (2, None, "cuda", 2, ["cuda:0", "cuda:1"]),
        (2, None, "cuda:1", 2, ["cuda:1", "cuda:1"]),
        (None, ["cuda:0", " cuda:1"], "auto", 2, ["cuda:0", "cuda:1"]),
        (2, ["cpu", "cpu"], "auto", 0, ["cpu", "cpu"]),
    ],
)
def test_each_worker_gets_a_device(n, devices, device, gpus, expected):
    assert worker_devices(n, devices, device, gpus) == expected


@pytest.mark.parametrize(
    ("n", "devices", "fault"),
    [
        (0, None, "workers must be an integer >= 1, but got workers=0"),
        (3, ["cpu", "cpu"], "--workers must equal the number of --devices"),
        (None, ["cuda:0", ""], "devices must be non-empty names"),
    ],
)
def test_bad_worker_counts_and_device_lists_are_refused(n, devices, fault):
    with pytest.raises(ValueError, match=re.escape(fault)):
        worker_devices(n, devices, "auto", 0)


def test_the_exit_code_is_the_first_failed_workers():
    assert exit_code([0, 0]) == 0
    assert exit_code([0, 2, 1]) == 2
    assert exit_code([-signal.SIGKILL, 0]) == 128 + signal.SIGKILL


def test_each_worker_gets_its_device_and_the_config_on_stdin(tmp_path, monkeypatch):
    """The jobs the workers are given: the checked config with their own device; nothing of
    the config (a storage password) on the command line."""
    url = "postgresql+psycopg://user:s3cret@db.example/study"
    config = load_config("toy", {"storage": url})
    seen = {}

    def fake_supervise(commands, jobs, *, out=None, env=None):
        seen.update(commands=commands, jobs=[json.loads(j) for j in jobs], env=env)
        return [0, 0]

    monkeypatch.setattr(workers, "supervise", fake_supervise)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = workers.run_workers(config, ["cpu", "cpu"], heartbeat_interval=1, grace_period=2)
    assert result.exit_code == 0 and result.devices == ("cpu", "cpu")
    assert [j["config"]["device"] for j in seen["jobs"]] == ["cpu", "cpu"]
    assert all(j["config"]["storage"] == url for j in seen["jobs"])
    assert all((j["heartbeat_interval"], j["grace_period"]) == (1, 2) for j in seen["jobs"])
    assert "s3cret" not in " ".join(" ".join(c) for c in seen["commands"])
    assert seen["commands"][0][-2:] == ["-m", "sigmatune.study.commands.workers"]
    # two CPU workers share the cores rather than each taking all of them
    assert seen["env"]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


# ----------------------------------------------------------------------------- the parent

# A stand-in worker: its job says what to do ("exitN": print and exit with N; "wait": wait
# for a signal and say which one came).
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from sigmatune.study.commands.workers import exit_with_parent
    job = sys.stdin.readline().strip()
    exit_with_parent(sys.stdin)
    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    try:
        print("job", job, flush=True)
        print("pid", os.getpid(), flush=True)
        if job.startswith("exit"):
            print("a line without a newline at the end", end="", flush=True)
            sys.exit(int(job[4:]))
        time.sleep(120)
    except KeyboardInterrupt:
        print("got SIGINT", flush=True)
        sys.exit(130)
    """
)

PARENT = textwrap.dedent(
    """
    import sys
    from sigmatune.study.commands.workers import exit_code, supervise
    code = sys.argv[1]
    codes = supervise([[sys.executable, "-c", code]] * (len(sys.argv) - 2), sys.argv[2:])
    print("codes", codes, flush=True)
    sys.exit(exit_code(codes))
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_output_lines_are_prefixed_and_a_failed_worker_fails_the_command():
    out = io.StringIO()
    command = [sys.executable, "-c", CHILD]
    codes = supervise([command, command], ["exit0", "exit3"], out=out, env=_env())
    assert codes == [0, 3] and exit_code(codes) == 3
    lines = out.getvalue().splitlines()
    assert all(re.match(r"\[w[01]\] ", line) for line in lines), lines
    for k, job in enumerate(["exit0", "exit3"]):
        mine = [line[5:] for line in lines if line.startswith(f"[w{k}] ")]
        assert mine[0] == f"job {job}" and mine[1].startswith("pid ")
        assert mine[2] == "a line without a newline at the end"


def _start_parent(*jobs: str) -> tuple[subprocess.Popen, dict[int, int]]:
    """The parent with stand-in workers; returns it once every worker has said its pid."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, *jobs],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pids: dict[int, int] = {}
    while len(pids) < len(jobs):
        line = parent.stdout.readline()
        assert line, "the parent ended before its workers started"
        found = re.match(r"\[w(\d+)\] pid (\d+)", line)
        if found:
            pids[int(found.group(1))] = int(found.group(2))
    return parent, pids


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("sig", "said", "code"),
    [(signal.SIGTERM, "got SIGTERM", 143), (signal.SIGINT, "got SIGINT", 130)],
)
def test_sigterm_and_ctrl_c_reach_every_worker_and_the_parent_reports_them(sig, said, code):
    parent, _ = _start_parent("wait", "wait")
    parent.send_signal(sig)
    rest = parent.stdout.read()
    assert parent.wait() == code, rest
    assert f"[w0] {said}" in rest and f"[w1] {said}" in rest
    assert f"codes [{code}, {code}]" in rest


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has ended (its reaper is elsewhere)


@pytest.mark.timeout(120)
def test_workers_end_by_themselves_when_their_parent_is_killed():
    parent, pids = _start_parent("wait", "wait")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids.values()):
        assert time.monotonic() < deadline, f"workers {pids} outlived their parent"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- sigmatune run


def _sigmatune(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**_env(), "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS")  # the parent shares the cores between its workers
    return subprocess.run(
        [sys.executable, "-m", "sigmatune.study.commands.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY = [
    "--preset", "toy", "--device", "cpu", "--no-progress",
    "--set", "outer.outer_trials=2",
    "--set", "outer.pruner='none'",
    "--set", "train.train_nimg=32_768",
    "--set", "train.checkpoint_nimg=8_192",
    "--set", "train.batch_size=256",
    "--set", "inner.fid_num_images=256",
    "--set", "inner.batch_size=256",
    "--set", "inner.peers=[]",
    "--inner-trials", "2",
    "--nfe", "3",
]  # fmt: skip


@pytest.mark.slow
def test_a_device_this_machine_lacks_fails_before_any_worker_starts(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _sigmatune("run", *TINY, "--devices", "cpu,cuda:0", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cuda:0" in proc.stderr and "Traceback" not in proc.stderr
    assert "[w" not in proc.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", [["--workers", "2"], ["--devices", "cpu,cpu"]])
def test_sigmatune_run_with_two_workers_shares_one_study(tmp_path, how):
    import optuna

    # three trials for two workers: a worker that starts late (a loaded machine) still
    # finds a trial left unless the other has finished two whole trials before it began
    args = [*TINY, "--set", "outer.outer_trials=3"]
    proc = _sigmatune("run", *args, "--storage", "sqlite:///w.db", *how, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "sigmatune: 2 workers on cpu, cpu" in lines
    for k in (0, 1):
        assert f"[w{k}] sigmatune: worker on cpu, pid" in proc.stdout
    # every worker line is prefixed; the parent's own lines come before and after
    inner = [line for line in lines if re.match(r"\[w\d\] ", line)]
    assert inner and not [line for line in lines if line.startswith("trial ")]
    # both workers took outer trials of the one study
    trained = {int(m) for m in re.findall(r"\[w(\d)\] trial +\d+ COMPLETE", proc.stdout)}
    assert trained == {0, 1}, proc.stdout
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'w.db'}")
    # two workers that look for work at the same moment may both start the last trial:
    # up to one trial per extra worker beyond the budget (Optuna's documented overshoot)
    states = [t.state.name for t in study.trials]
    assert states in (["COMPLETE"] * 3, ["COMPLETE"] * 4), states
    assert re.search(r"^best: trial [0-3] ", proc.stdout, re.M), proc.stdout
