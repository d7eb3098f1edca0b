"""The artifact store: where everything a retried trial needs lives, so that any worker on any
machine can resume it — training checkpoints, trained model files and FID reference caches.

One interface, :class:`Artifacts`, two kinds (config key ``artifact_store``):

- :class:`SharedFolder` (``artifact_store = ""``, the default): the artifact folder itself is
  the store, a folder every worker mounts (NFS, or one machine's disk). Files are read and
  written in place; there is nothing to copy.
- :class:`ObjectStore` (``"s3://BUCKET/PREFIX"``: Optuna's ``Boto3ArtifactStore``;
  ``"file:///PATH"``: a folder used as a bucket is, e.g. one mounted by s3fs or gcsfuse): the
  artifact folder is this machine's cache of the bucket. A file is put into the bucket after it
  is written here and fetched from it before it is read.

Keys are paths relative to the artifact folder (``runs/NAME-UID/trial-0003/checkpoints/
checkpoint-000000016384.pt``), so the folder mirrors the bucket. A bucket cannot be listed
through Optuna's artifact protocol, so the newest file of a *series* (a trial's checkpoints, a
scorer's reference cache) is named by a small pointer object ``SERIES/LATEST``, put after the
object it names: a pointer never names an object that is not there yet.

Nothing is ever half written: a bucket replaces an object whole (an S3 PUT; a folder bucket
writes a temporary file and renames it), and a fetched object is written to a temporary file
beside its place and renamed, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound

from sigmatune.models.training import checkpoint_path
from sigmatune.study.config import Config
from sigmatune.study.errors import WriteError
from sigmatune.study.storage import StorageError, artifact_store_for, redact_url, safe_name
from sigmatune.study.urls import parse_artifact_store_url

__all__ = [
    "Artifacts",
    "FolderBucket",
    "bucket_store",
    "ObjectStore",
    "SharedFolder",
    "checkpoint_uploader",
    "fetch_checkpoint",
    "open_artifacts",
    "parse_artifact_store_url",
    "scorer_series",
    "share_scorer_cache",
]

LATEST = "LATEST"  # the pointer object of a series: SERIES/LATEST holds the newest file's key
FETCH_ATTEMPTS = 3  # a pointer read just before its object was replaced: read it again
BOTO3_HINT = 'pip install "sigmatune[s3]" (boto3)'


class Artifacts(ABC):
    """Where a run's files live: ``local_dir`` on this machine (checkpoints, model files and
    FID caches are written and read there), and the store that every worker shares.

    ``optuna_store`` is the Optuna artifact store (``optuna.artifacts.upload_artifact``, the
    dashboard); ``shared``: whether the local folder *is* the store (nothing to copy).
    """

    local_dir: Path
    optuna_store: Any
    shared: bool
    url: str

    def key(self, path: str | Path) -> str:
        """The store's key of a path inside the local folder (its relative POSIX path)."""
        try:
            relative = Path(path).resolve().relative_to(self.local_dir.resolve())
        except ValueError:
            raise ValueError(
                f"path must be inside the artifact folder {str(self.local_dir)!r}, but got "
                f"{str(path)!r}"
            ) from None
        return PurePosixPath(*relative.parts).as_posix()

    @abstractmethod
    def put(self, path: str | Path, series: str) -> None:
        """Put the file at ``path`` (in the local folder) into the store, as the newest of
        ``series``."""

    @abstractmethod
    def fetch_latest(self, series: str) -> Path | None:
        """Fetch the newest file of ``series`` into the local folder; its path, or None when
        nothing was fetched."""


class SharedFolder(Artifacts):
    """The artifact folder is the store: every worker mounts it (or there is one machine)."""

    shared = True

    def __init__(self, folder: str | Path) -> None:
        self.local_dir = Path(folder)
        # Optuna's FileSystemArtifactStore writes in place: a full disk would leave half a file
        self.optuna_store = FolderBucket(self.local_dir)
        self.url = ""

    def put(self, path: str | Path, series: str) -> None:
        self.key(path)  # it is in the folder already, where every worker sees it

    def fetch_latest(self, series: str) -> Path | None:
        return None  # every file is here already

    def __repr__(self) -> str:
        return f"SharedFolder({str(self.local_dir)!r})"


class FolderBucket(optuna.artifacts.FileSystemArtifactStore):
    """A folder used the way a bucket is: keys with ``/`` are sub-folders, created on write,
    and a write replaces an object whole (a temporary file renamed into place), as an S3 PUT
    does; Optuna's ``FileSystemArtifactStore`` writes in place."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._get_filepath(artifact_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, content_body)


class _Prefixed:
    """An Optuna artifact store whose ids all start with ``prefix`` (Optuna's own artifacts,
    model files and exports, land under the run's prefix too)."""

    def __init__(self, backend: Any, prefix: str) -> None:
        self.backend, self.prefix = backend, prefix

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.backend.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.backend.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.backend.remove(self.prefix + artifact_id)


def _with_prefix(bucket: Any, prefix: str) -> Any:
    prefix = prefix.strip("/")
    return _Prefixed(bucket, f"{prefix}/") if prefix else bucket


class ObjectStore(Artifacts):
    """A bucket shared by every worker (any Optuna artifact store: ``Boto3ArtifactStore``, a
    :class:`FolderBucket`), with ``local_dir`` as this machine's cache of it. Object keys are
    ``prefix`` + the file's key; a series keeps its newest file only."""

    shared = False

    def __init__(self, bucket: Any, local_dir: str | Path, prefix: str = "", url: str = "") -> None:
        self.bucket = _with_prefix(bucket, prefix)
        self.optuna_store = self.bucket
        self.local_dir = Path(local_dir)
        self.url = url

    def put(self, path: str | Path, series: str) -> None:
        key = self.key(path)
        with open(path, "rb") as f:
            self.bucket.write(key, f)
        previous = self._pointer(series)
        self.bucket.write(self._pointer_id(series), io.BytesIO(key.encode()))
        if previous is not None and previous != key:
            try:
                self.bucket.remove(previous)
            except ArtifactNotFound:
                pass  # removed already (by another worker that put the same series)

    def fetch_latest(self, series: str) -> Path | None:
        for _ in range(FETCH_ATTEMPTS):
            key = self._pointer(series)
            if key is None:
                return None
            path = self.local_dir / key
            try:
                with self.bucket.open_reader(key) as f:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _write_atomically(path, f)
                return path
            except ArtifactNotFound:
                continue  # replaced (and removed) since the pointer was read
        return None

    def _pointer_id(self, series: str) -> str:
        return f"{series.strip('/')}/{LATEST}"

    def _pointer(self, series: str) -> str | None:
        try:
            with self.bucket.open_reader(self._pointer_id(series)) as f:
                return f.read().decode().strip() or None
        except ArtifactNotFound:
            return None

    def __repr__(self) -> str:
        return f"ObjectStore({self.url or self.bucket!r}, local_dir={str(self.local_dir)!r})"


class _Recording:
    """A file whose failed writes are kept, told apart from the failures of the content that
    is copied into it (a broken connection is no full disk)."""

    def __init__(self, f: BinaryIO, failed: list[OSError]) -> None:
        self.f, self.failed = f, failed

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.failed.append(exc)
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as exc:
            self.failed.append(exc)
            raise


def _write_atomically(path: Path, content: BinaryIO) -> None:
    """Copy ``content`` to a temporary file beside ``path``, then ``os.replace`` it there. A
    write that fails (a full disk) removes the temporary file and raises
    :class:`~sigmatune.study.errors.WriteError` naming ``path``, with the failed write's
    ``errno``; a failure of ``content`` itself is raised as it is."""

    failed: list[OSError] = []
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            out = _Recording(f, failed)
            shutil.copyfileobj(content, out)
            out.flush()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if not failed:
            raise
        left = "the previous file is unchanged" if path.is_file() else "nothing was written"
        err = WriteError(f"cannot write {str(path)!r} ({failed[0].strerror or failed[0]}); {left}")
        err.errno = failed[0].errno
        raise err from failed[0]


# ----------------------------------------------------------------------------- opening


def open_artifacts(url: str, local_dir: str | Path, storage_url: str | None = None) -> Artifacts:
    """The artifact store of ``url`` (the config's ``artifact_store``) with ``local_dir`` (the
    artifact folder, created here) as the folder this machine reads and writes. A store
    that cannot be used is a :class:`~sigmatune.study.storage.StorageError`, raised before
    the local folder is created."""
    kind, where, prefix = parse_artifact_store_url(url)
    bucket = _bucket(url, kind, where)
    _check_local_dir(Path(local_dir), storage_url)
    _, folder = artifact_store_for(storage_url, local_dir)
    if bucket is None:
        return SharedFolder(folder)
    return ObjectStore(bucket, folder, prefix, url=str(url).strip())


def bucket_store(url: str) -> Any | None:
    """The Optuna artifact store of an ``artifact_store`` URL, its prefix applied (what the
    runs attached, e.g. model files, is there), or None for ``""`` (the artifact folder is
    the store). Creates nothing: for readers such as optuna-dashboard."""
    kind, where, prefix = parse_artifact_store_url(url)
    bucket = _bucket(url, kind, where)
    return None if bucket is None else _with_prefix(bucket, prefix)


def _bucket(url: str, kind: str, where: str) -> Any | None:
    """The bucket itself (an Optuna artifact store), or None for a shared folder."""
    if kind == "s3":
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise StorageError(
                f"cannot use the artifact store {url!r}: boto3, which Optuna's "
                f"Boto3ArtifactStore needs, is not installed; install it: {BOTO3_HINT}"
            ) from None
        return optuna.artifacts.Boto3ArtifactStore(where)
    if kind == "file":
        if not Path(where).is_dir() or not os.access(where, os.W_OK | os.X_OK):
            raise StorageError(
                f"cannot use the artifact store {url!r}: {where!r} is not a writable folder "
                "(create it, or mount the shared bucket there, on every machine)"
            )
        return FolderBucket(where)
    return None


def _check_local_dir(folder: Path, storage_url: str | None) -> None:
    """An artifact folder that exists must be a writable folder."""
    if folder.exists() and (not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK)):
        where = redact_url(storage_url) if storage_url else "this run"
        raise StorageError(
            f"cannot use the artifact folder {str(folder)!r} (for storage {where!r}): it is "
            "not a writable folder; give another one (--set artifact_dir=PATH)"
        )


# ----------------------------------------------------------------------------- the series


def fetch_checkpoint(artifacts: Artifacts, checkpoint_dir: Path) -> Path | None:
    """Fetch the newest checkpoint of the series ``checkpoint_dir`` from the store into that
    folder (a retried trial on another machine resumes it); its path, or None."""
    return artifacts.fetch_latest(artifacts.key(checkpoint_dir))


def checkpoint_uploader(
    artifacts: Artifacts, checkpoint_dir: Path, then: Callable[..., Any] | None = None
) -> Callable[..., Any] | None:
    """A ``models.training.train`` callback that puts each new checkpoint into the store (the
    newest of the series ``checkpoint_dir``) and then calls ``then``; for a shared folder,
    ``then`` itself (every checkpoint is in the store as it is written)."""
    if artifacts.shared:
        return then

    series = artifacts.key(checkpoint_dir)

    def at_checkpoint(nimg: int, *args: Any, **kwargs: Any) -> None:
        artifacts.put(checkpoint_path(checkpoint_dir, nimg), series)
        if then is not None:
            then(nimg, *args, **kwargs)

    return at_checkpoint


def scorer_series(config: Config) -> str:
    """The series of a config's FID reference cache, named as the scorer names its file (data
    set, extractor, reference images) and by the seed that picks the reference images."""

    inner = config.inner
    name = f"{safe_name(config.dataset)}-{inner.fid_extractor}-n{inner.fid_num_images}"
    return f"fid-cache/{name}-seed{config.seed}"


def share_scorer_cache(
    artifacts: Artifacts, series: str, build: Callable[[], Any], floor_sets: int
) -> Any:
    """Build the FID scorer with its reference cache (statistics and floors) fetched from the
    store first; when this machine computed or completed it, put it back (with the floors
    over ``floor_sets`` seed sets, so that no other machine computes them again)."""
    fetched = artifacts.fetch_latest(series)
    before = _signature(fetched)
    scorer = build()
    path = getattr(scorer, "cache_path", None)
    if artifacts.shared or path is None:
        return scorer
    scorer.floors(sets=floor_sets)
    if fetched is None or Path(path) != fetched or _signature(Path(path)) != before:
        artifacts.put(path, series)
    return scorer


def _signature(path: Path | None) -> tuple[int, int] | None:
    """A file's (size, mtime in ns): whether it was rewritten since."""
    if path is None or not path.is_file():
        return None
    st = path.stat()
    return st.st_size, st.st_mtime_ns
