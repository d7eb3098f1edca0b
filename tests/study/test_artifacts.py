"""study.artifacts: one store for everything a retried trial needs, wherever it is retried.

Two "machines" are two artifact folders that see each other only through a bucket (a
``FolderBucket``, a folder used the way S3 is: whole-object writes, no listing). A training
killed after a checkpoint resumes it on a machine whose folder is empty; a ``sigmatune run``
worker SIGKILLed mid-training is retried by a worker on another folder, which fetches the
checkpoint and the FID reference cache from the bucket. Two processes computing the same FID
cache at once never read half a file, and the readers of these tests do catch a torn file when
one is written in place.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch

from sigmatune.study.artifacts import (
    LATEST,
    FolderBucket,
    ObjectStore,
    SharedFolder,
    bucket_store,
    checkpoint_uploader,
    fetch_checkpoint,
    open_artifacts,
    parse_artifact_store_url,
)
from sigmatune.study.storage import StorageError

ROOT = Path(__file__).resolve().parents[2]


def machines(tmp_path: Path, prefix: str = "") -> tuple[Path, ObjectStore, ObjectStore]:
    """A bucket folder and two machines' stores on it, each with its own local folder."""
    bucket = tmp_path / "bucket"
    bucket.mkdir(parents=True)
    return (
        bucket,
        ObjectStore(FolderBucket(bucket), tmp_path / "machine-a", prefix),
        ObjectStore(FolderBucket(bucket), tmp_path / "machine-b", prefix),
    )


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("", ("folder", "", "")),
        ("  ", ("folder", "", "")),
        ("s3://my-bucket", ("s3", "my-bucket", "")),
        ("s3://my-bucket/team/sigmatune/", ("s3", "my-bucket", "team/sigmatune")),
        ("file:///mnt/bucket", ("file", "/mnt/bucket", "")),
    ],
)
def test_store_urls_parse_without_touching_anything(url, parsed):
    assert parse_artifact_store_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "fault"),
    [
        ("s3://", "needs a bucket name"),
        ("s3:///prefix", "needs a bucket name"),
        ("file://relative/path", "absolute path"),
        ("gs://bucket", "'gs' is not supported"),
        ("/mnt/bucket", "'(none)' is not supported"),
        ("s3://bucket/p?x=1", "query or fragment"),
    ],
)
def test_a_bad_store_url_is_one_error_naming_it_and_the_accepted_forms(url, fault):
    with pytest.raises(StorageError) as info:
        parse_artifact_store_url(url)
    text = str(info.value)
    assert repr(url) in text and fault in text and "s3://BUCKET/PREFIX" in text
    assert "\n" not in text


def test_the_config_checks_the_store_url_where_it_enters():
    from sigmatune.study.config import ConfigError, load_config

    assert load_config("toy", {"artifact_store": "s3://b/p"}).artifact_store == "s3://b/p"
    with pytest.raises(ConfigError, match=r"artifact_store.*'gs://b'.*not supported"):
        load_config("toy", {"artifact_store": "gs://b"})


def test_s3_without_boto3_is_one_clear_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 raises ImportError
    local = tmp_path / "local"
    with pytest.raises(StorageError) as info:
        open_artifacts("s3://my-bucket/runs", local)
    text = str(info.value)
    assert "'s3://my-bucket/runs'" in text and "sigmatune[s3]" in text
    assert not local.exists()


@pytest.mark.slow
def test_run_with_an_s3_store_and_no_boto3_fails_before_writing_anything(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # boto3 hidden even where it is installed: a module named boto3 that fails to import
    write(tmp_path / "hide" / "boto3.py", b"raise ImportError('no boto3 here')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "hide"), env["PYTHONPATH"]])
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "sigmatune.study.commands.cli", "run", "--preset", "toy"]
        + ["--storage", "sqlite:///run.db", "--device", "cpu", "--no-progress"]
        + ["--set", 'artifact_store="s3://my-bucket/sigmatune"'],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "s3://my-bucket/sigmatune" in proc.stderr and "sigmatune[s3]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(work.iterdir()) == []  # no database, no artifact folder


def test_a_file_bucket_that_is_not_a_folder_is_refused(tmp_path):
    write(tmp_path / "not-a-folder", b"x")
    with pytest.raises(StorageError, match="not a writable folder"):
        open_artifacts(f"file://{tmp_path / 'not-a-folder'}", tmp_path / "local")
    assert not (tmp_path / "local").exists()


def test_an_artifact_folder_that_is_a_file_is_refused(tmp_path):
    write(tmp_path / "art", b"x")
    with pytest.raises(StorageError, match="'.*art'"):
        open_artifacts("", tmp_path / "art", "sqlite:///x.db")


# ----------------------------------------------------------------------------- the stores


def test_a_shared_folder_is_the_store_and_copies_nothing(tmp_path):
    store = open_artifacts("", tmp_path / "art")
    assert isinstance(store, SharedFolder) and store.shared
    assert isinstance(store.optuna_store, optuna.artifacts.FileSystemArtifactStore)
    path = write(tmp_path / "art" / "runs" / "r" / "checkpoint-1.pt", b"one")
    store.put(path, "runs/r")
    assert store.fetch_latest("runs/r") is None
    assert sorted(p.name for p in (tmp_path / "art").rglob("*") if p.is_file()) == [
        "checkpoint-1.pt"
    ]

    def then(*_a):
        return None

    assert checkpoint_uploader(store, tmp_path / "art" / "runs", then) is then


def test_a_file_put_on_one_machine_is_fetched_on_another(tmp_path):
    bucket, a, b = machines(tmp_path)
    series = "runs/r-1/trial-0000/checkpoints"
    first = write(a.local_dir / series / "checkpoint-000000000100.pt", b"first")
    a.put(first, series)
    assert (bucket / series / LATEST).read_text() == f"{series}/checkpoint-000000000100.pt"
    got = b.fetch_latest(series)
    assert got == b.local_dir / series / "checkpoint-000000000100.pt"
    assert got.read_bytes() == b"first"

    second = write(a.local_dir / series / "checkpoint-000000000200.pt", b"second")
    a.put(second, series)
    assert b.fetch_latest(series).read_bytes() == b"second"
    # the bucket keeps the newest of a series only, as training keeps its newest checkpoint
    assert sorted(p.name for p in (bucket / series).iterdir()) == [
        LATEST,
        "checkpoint-000000000200.pt",
    ]
    assert b.fetch_latest("runs/r-1/trial-0001/checkpoints") is None
    with pytest.raises(ValueError, match="inside the artifact folder"):
        a.put(tmp_path / "elsewhere.pt", series)


def test_a_prefix_holds_the_series_and_optunas_own_artifacts(tmp_path):
    bucket, a, b = machines(tmp_path, prefix="/team/sigmatune/")
    a.put(write(a.local_dir / "fid-cache" / "c.pt", b"cache"), "fid-cache/c")
    assert (bucket / "team" / "sigmatune" / "fid-cache" / "c.pt").read_bytes() == b"cache"
    study = optuna.create_study()
    trial = study.ask()
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=a.optuna_store,
        file_path=str(write(a.local_dir / "model.pt", b"weights")),
        study_or_trial=trial,
    )
    assert (bucket / "team" / "sigmatune" / artifact_id).read_bytes() == b"weights"
    optuna.artifacts.download_artifact(
        artifact_store=b.optuna_store, artifact_id=artifact_id, file_path=str(tmp_path / "m.pt")
    )
    assert (tmp_path / "m.pt").read_bytes() == b"weights"
    assert bucket_store("") is None


def test_a_reader_opens_the_bucket_with_its_prefix_and_creates_nothing(tmp_path, monkeypatch):
    bucket, a, _ = machines(tmp_path)
    a.optuna_store.write("model-1", io.BytesIO(b"weights"))
    reader = bucket_store(f"file://{bucket}")
    assert reader.open_reader("model-1").read() == b"weights"
    monkeypatch.setattr(optuna.artifacts, "Boto3ArtifactStore", lambda name: FolderBucket(bucket))
    monkeypatch.setitem(sys.modules, "boto3", object())  # as if installed; no network
    prefixed = bucket_store("s3://my-bucket/team/run")
    prefixed.write("model-2", io.BytesIO(b"more"))
    assert (bucket / "team" / "run" / "model-2").read_bytes() == b"more"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket"]  # no local folder


class Breaks(io.RawIOBase):
    """A stream that gives ``head`` and then fails, as a dropped connection does."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.head:
            raise ConnectionError("connection reset")
        n = min(len(buffer), len(self.head))
        buffer[:n], self.head = self.head[:n], self.head[n:]
        return n


def test_a_failed_write_or_fetch_leaves_the_previous_file_whole(tmp_path):
    bucket = FolderBucket(tmp_path / "bucket")
    bucket.write("a/b/object", io.BytesIO(b"old and whole"))
    assert (tmp_path / "bucket" / "a" / "b" / "object").read_bytes() == b"old and whole"
    with pytest.raises(ConnectionError):
        bucket.write("a/b/object", Breaks(b"new but"))
    assert (tmp_path / "bucket" / "a" / "b" / "object").read_bytes() == b"old and whole"
    assert [p.name for p in (tmp_path / "bucket" / "a" / "b").iterdir()] == ["object"]

    class Dropping(FolderBucket):
        def open_reader(self, artifact_id):
            if artifact_id.endswith(LATEST):
                return super().open_reader(artifact_id)
            return Breaks(b"half")

    _, a, _ = machines(tmp_path / "m")
    a.put(write(a.local_dir / "s" / "f.pt", b"mine"), "s")
    b = ObjectStore(Dropping(tmp_path / "m" / "bucket"), tmp_path / "m" / "machine-a")
    with pytest.raises(ConnectionError):
        b.fetch_latest("s")
    assert (a.local_dir / "s" / "f.pt").read_bytes() == b"mine"
    assert [p.name for p in (a.local_dir / "s").iterdir()] == ["f.pt"]


# ----------------------------------------------------------------------------- checkpoints


def _train(checkpoint_dir, callback=None):
    from sigmatune.models.data import load_dataset
    from sigmatune.models.networks import make_network
    from sigmatune.models.training import TrainSettings, train
    from sigmatune.objectives.literature import LITERATURE
    from sigmatune.objectives.loss import objective_from_description

    data = load_dataset("gmm2d", seed=0)
    desc = LITERATURE["edm2"].description(float(data.sigma_data), 0.002, 80.0)
    torch.manual_seed(0)
    net = make_network("mlp", {"hidden": 32, "depth": 2, "emb_dim": 16}, tuple(data.shape))
    settings = TrainSettings(
        train_nimg=3072,
        batch_size=256,
        lr=2e-3,
        ema_halflife_nimg=500,
        seed=0,
        checkpoint_nimg=1024,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: more threads only wait for each other
    try:
        return train(
            net,
            objective_from_description(desc),
            data.x,
            settings,
            checkpoint_dir=checkpoint_dir,
            run_key="trial-0003",
            callback=callback,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)


class Killed(Exception):
    pass


def test_a_training_killed_after_a_checkpoint_resumes_it_on_a_machine_with_an_empty_folder(
    tmp_path,
):
    bucket, a, b = machines(tmp_path)
    rel = Path("runs") / "r-1" / "trial-0003" / "checkpoints"

    def die_at_2048(nimg, *_):
        if nimg == 2048:
            raise Killed  # the worker dies here: after its second checkpoint was put

    with pytest.raises(Killed):
        _train(a.local_dir / rel, checkpoint_uploader(a, a.local_dir / rel, then=die_at_2048))
    assert (bucket / rel / LATEST).read_text().endswith("checkpoint-000000002048.pt")
    import shutil

    shutil.rmtree(a.local_dir)  # machine A is gone, and its disk with it

    assert not b.local_dir.exists()
    fetched = fetch_checkpoint(b, b.local_dir / rel)
    assert fetched == b.local_dir / rel / "checkpoint-000000002048.pt"
    resumed = _train(b.local_dir / rel, checkpoint_uploader(b, b.local_dir / rel))
    assert resumed.resumed_from_nimg == 2048 and resumed.nimg == 3072
    assert (bucket / rel / LATEST).read_text().endswith("checkpoint-000000003072.pt")

    # the resumed model is the uninterrupted one, bit for bit
    whole = _train(tmp_path / "uninterrupted")
    for name, value in whole.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[name]), name


# ----------------------------------------------------------------------------- end to end


def _run_command(storage: str, artifact_dir: Path, bucket: Path) -> list[str]:
    return [
        sys.executable, "-m", "sigmatune.study.commands.cli", "run", "--preset", "toy",
        "--storage", storage, "--device", "cpu", "--no-progress",
        "--heartbeat-interval", "1", "--grace-period", "2",
        "--set", f"artifact_dir={str(artifact_dir)!r}",
        "--set", f"artifact_store={f'file://{bucket}'!r}",
        "--set", "name='bucket'",
        "--set", "outer.outer_trials=1",
        "--set", "outer.pruner='none'",
        "--set", "train.train_nimg=131_072",
        "--set", "train.checkpoint_nimg=8_192",
        "--set", "train.batch_size=256",
        "--set", "inner.fid_num_images=256",
        "--set", "inner.batch_size=256",
        "--set", "inner.peers=[]",
        "--inner-trials", "2",
        "--nfe", "3",
    ]  # fmt: skip


def _pointer_nimg(bucket: Path) -> int | None:
    found = list(bucket.glob("runs/*/trial-0000/checkpoints/LATEST"))
    return int(found[0].read_text().rsplit("-", 1)[1].split(".")[0]) if found else None


@pytest.mark.slow
def test_a_killed_worker_is_resumed_by_a_worker_that_sees_only_the_bucket(tmp_path):
    """Two machines: two artifact folders, one SQLite study and one bucket between them.
    Machine A is SIGKILLed in the middle of training and its folder removed; machine B, with
    an empty folder, retries the trial from the checkpoint in the bucket, and its FID
    reference cache comes from the bucket too (it is not computed again)."""
    from sigmatune.study import records
    from sigmatune.study.storage import make_storage

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    logs = {m: tmp_path / f"{m}.log" for m in "ab"}
    a = subprocess.Popen(
        _run_command(storage, tmp_path / "machine-a", bucket),
        cwd=tmp_path,
        env=env,
        stdout=logs["a"].open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while _pointer_nimg(bucket) is None:
            assert a.poll() is None, logs["a"].read_text()
            assert time.monotonic() < deadline, logs["a"].read_text()
            time.sleep(0.05)
        a.send_signal(signal.SIGKILL)
        a.wait()
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    saved = _pointer_nimg(bucket)
    assert saved < 131_072, "machine A finished training before it was killed"
    (cache,) = [p for p in bucket.glob("fid-cache/*.pt")]
    cache_bytes, cache_mtime = cache.read_bytes(), cache.stat().st_mtime_ns
    import shutil

    shutil.rmtree(tmp_path / "machine-a")

    b = subprocess.run(
        _run_command(storage, tmp_path / "machine-b", bucket),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    logs["b"].write_text(b.stdout + b.stderr)
    assert b.returncode == 0, b.stdout + b.stderr

    study = records.read_study(make_storage(storage, heartbeat_interval=None), "bucket")
    states = {t.number: t.state for t in study.trials}
    assert states == {0: "FAIL", 1: "COMPLETE"}, states
    retry = study.trials[1]
    assert retry.retry_of == 0 and retry.original_trial == 0
    assert retry.train["resumed_from_nimg"] == saved, (retry.train, saved)
    # the model file is in the bucket, under Optuna's artifact id, where a reader finds it
    assert (bucket / retry.model_artifact).is_file()
    optuna.artifacts.download_artifact(
        artifact_store=bucket_store(f"file://{bucket}"),
        artifact_id=retry.model_artifact,
        file_path=str(tmp_path / "model.pt"),
    )
    assert (tmp_path / "model.pt").read_bytes() == (bucket / retry.model_artifact).read_bytes()
    # machine B fetched the reference cache (with its floors) and did not write it again
    (local,) = (tmp_path / "machine-b" / "fid-cache").glob("*.pt")
    assert local.name == cache.name and local.read_bytes() == cache_bytes
    assert cache.stat().st_mtime_ns == cache_mtime


# ----------------------------------------------------------------------------- FID caches

# A reader that loads every cache file it finds, as fast as it can, until told to stop; it
# prints how many loads succeeded and how many met a file it could not read.
READER = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    folders, stop = [Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1])
    ok = torn = 0
    while not stop.exists():
        for folder in folders:
            for path in folder.rglob("*.pt"):
                try:
                    torch.load(path, map_location="cpu", weights_only=True)
                    ok += 1
                except FileNotFoundError:
                    pass
                except Exception:
                    torn += 1
    print(ok, torn)
    """
)

# One worker's start: build the scorer through the store (fetch, compute, put), ROUNDS times
# in lockstep with the other writer (each round a fresh cache), recording every warning.
WRITER = textwrap.dedent(
    """
    import json, sys, time, warnings
    from pathlib import Path
    from sigmatune.models.data import load_dataset
    from sigmatune.study.artifacts import open_artifacts, scorer_series, share_scorer_cache
    from sigmatune.study.config import load_config
    from sigmatune.study.context import make_scorer
    me, store, local, sync, rounds = sys.argv[1:6]
    config = load_config("toy", {"inner.fid_num_images": 512, "device": "cpu",
                                 "artifact_store": store})
    data = load_dataset("gmm2d", seed=0)
    caught, stats = [], []
    for r in range(int(rounds)):
        url = store.replace("ROUND", str(r))  # each round a fresh cache (and bucket folder)
        if url:
            Path(url.removeprefix("file://")).mkdir(exist_ok=True)
        arts = open_artifacts(url, Path(local) / f"round-{r}")
        Path(sync, f"ready-{r}-{me}").touch()
        while len(list(Path(sync).glob(f"ready-{r}-*"))) < 2:
            time.sleep(0.001)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            scorer = share_scorer_cache(
                arts, scorer_series(config),
                lambda: make_scorer(config, data, arts.local_dir / "fid-cache", "cpu"), 3)
        caught += [str(w.message) for w in seen if "FID cache" in str(w.message)]
        stats.append(float(scorer.reference_stats[0].sum()))
    print(json.dumps({"warnings": caught, "stats": stats}))
    """
)

# A writer that does what an atomic write avoids: the file written in place, in pieces.
IN_PLACE = textwrap.dedent(
    """
    import io, sys, time, torch
    from pathlib import Path
    path, stop = Path(sys.argv[1]), Path(sys.argv[2])
    buf = io.BytesIO()
    torch.save({"x": torch.arange(200_000)}, buf)
    data = buf.getvalue()
    for _ in range(40):
        with open(path, "wb") as f:
            for k in range(0, len(data), 65536):
                f.write(data[k:k + 65536]); f.flush(); time.sleep(0.002)
    stop.touch()
    """
)


def _python(code: str, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


@pytest.mark.slow
def test_the_torn_file_reader_catches_a_file_written_in_place(tmp_path):
    """The check below is able to fail: a file written in place is read half written."""
    folder, stop = tmp_path / "cache", tmp_path / "stop"
    folder.mkdir()
    reader = _python(READER, str(folder), str(stop), cwd=tmp_path)
    _finish(_python(IN_PLACE, str(folder / "c.pt"), str(stop), cwd=tmp_path))
    ok, torn = map(int, _finish(reader).split())
    assert torn > 0, (ok, torn)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["one folder", "a bucket"])
def test_two_workers_computing_the_same_fid_cache_at_once_never_read_half_a_file(tmp_path, where):
    """``one folder``: two workers on one artifact folder (one machine, or NFS): the scorer's
    own atomic write. ``a bucket``: two machines with their own folders and one bucket."""
    rounds = 3
    bucket, sync, stop = tmp_path / "bucket", tmp_path / "sync", tmp_path / "stop"
    bucket.mkdir()
    sync.mkdir()
    if where == "one folder":
        stores, locals_ = ["", ""], [tmp_path / "shared", tmp_path / "shared"]
        watched = [tmp_path / "shared"]
    else:
        stores = [f"file://{bucket}/round-ROUND"] * 2
        locals_ = [tmp_path / "machine-a", tmp_path / "machine-b"]
        watched = [bucket, *locals_]
    for folder in watched:
        folder.mkdir(exist_ok=True)
    reader = _python(READER, *map(str, watched), str(stop), cwd=tmp_path)
    writers = [
        _python(WRITER, str(k), stores[k], str(locals_[k]), str(sync), str(rounds), cwd=tmp_path)
        for k in range(2)
    ]
    try:
        results = [json.loads(_finish(w).strip().splitlines()[-1]) for w in writers]
    finally:
        stop.touch()
    ok, torn = map(int, _finish(reader).split())
    assert torn == 0 and ok > 0, (ok, torn)
    for result in results:
        assert result["warnings"] == [], result  # no worker met an unreadable cache
    assert results[0]["stats"] == results[1]["stats"]  # the same reference, every round
    caches = list((bucket if where == "a bucket" else tmp_path / "shared").rglob("*.pt"))
    assert len(caches) == rounds, caches
    for path in caches:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert "real_features_sum" in state
        if where == "a bucket":  # put once the floors are in it: no machine computes them again
            assert "floors" in state
