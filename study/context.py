"""What every trial of one process shares: config, storage, artifacts, data, scorer, seeds.

:func:`make_context` checks everything a user can get wrong before it creates anything (the
device, the storage URL, the data set, the extractor's weights), then opens the storage and
builds the scorer; if opening or building fails, a database file or artifact folder this call
created is removed again, so a failed command leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from sigmatune.models.data import Dataset, load_dataset
from sigmatune.objectives.fid import Scorer, ScorerCacheWriteError, ScorerSettings
from sigmatune.study import records, spaces
from sigmatune.study.artifacts import Artifacts, open_artifacts, scorer_series, share_scorer_cache
from sigmatune.study.config import Config
from sigmatune.study.errors import WriteError
from sigmatune.study.storage import (
    artifact_dir_for,
    check_storage_location,
    make_storage,
    parse_storage_url,
    safe_name,
)

InnerSamplerFactory = Callable[[Config, int], optuna.samplers.BaseSampler]

# A data set spec that is a reference given as precomputed FID statistics (an .npz of mu and
# sigma, as pytorch-fid and clean-fid write): ``stats:PATH``.
STATS_PREFIX = "stats:"
# The range of the images a model of a statistics reference makes (diffusers' [-1, 1]).
STATS_VALUE_RANGE = (-1.0, 1.0)


def stats_path(dataset: str) -> str | None:
    """PATH of a ``stats:PATH`` data set spec, else None."""
    return dataset[len(STATS_PREFIX) :] if dataset.startswith(STATS_PREFIX) else None


@dataclass
class RunContext:
    """What every trial of one run process shares (built once per process).

    ``inner_sampler`` makes each inner study's sampler (``spaces.make_inner_sampler`` unless a
    caller, such as a benchmark, measures another one). ``artifacts`` is the store every worker
    shares (``artifact_dir`` its folder on this machine, ``artifact_store`` its Optuna view).
    ``sample_shape`` is the shape the samplers generate when it is not the data's (a latent
    model's latents), and ``decode`` turns a batch of samples into what is scored (a latent
    pipeline's VAE decoder; None: the samples themselves). With a reference given as
    statistics (``stats:PATH``), ``data`` holds no examples, only the images' shape and range.
    """

    config: Config
    storage: optuna.storages.BaseStorage
    artifact_store: Any
    artifact_dir: Path
    artifacts: Artifacts
    data: Dataset
    scorer: Scorer
    device: torch.device
    seeds: records.SeedPlan
    progress: bool = True
    log: Callable[[str], None] = print
    poll_seconds: float = 2.0
    inner_sampler: InnerSamplerFactory = field(default=spaces.make_inner_sampler)
    sample_shape: tuple[int, ...] | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    # the paired objective's reference runs (``study.scoring.ReferenceCache``), made on first
    # use by ``study.scoring.references``
    paired_references: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample the samplers generate."""
        return tuple(self.sample_shape) if self.sample_shape is not None else tuple(self.data.shape)

    @property
    def floors_available(self) -> bool:
        """False where the scorer has no floors (a reference given as statistics)."""
        return bool(getattr(self.scorer, "floors_available", True))

    @property
    def sigma_data(self) -> float:
        return float(self.data.sigma_data)

    def run_dir(self, study_uid: str) -> Path:
        """Where one study's checkpoints, models and exports live: named by the study's name
        and its unique id, so two studies never share a folder (a new database with an old
        name, or two names that read alike once made safe for a file system)."""
        return self.artifact_dir / "runs" / f"{safe_name(self.config.name)[:60]}-{study_uid[:12]}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device must be 'auto' or 'cpu' on this machine (it has no CUDA GPU), "
                f"but got device={name!r}"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)"
            )
    return device


@contextlib.contextmanager
def undo_on_error(storage_url: str, artifact_dir: Path) -> Iterator[None]:
    """Remove the SQLite file and the artifact folder if this block created them and fails
    (a SQLite file only while it holds no study)."""
    loc = parse_storage_url(storage_url)
    db = loc.path if loc.kind == "sqlite" else None
    db_existed = db is not None and db.exists()
    dir_existed = artifact_dir.exists()
    try:
        yield
    except BaseException:
        if db is not None and not db_existed and db.exists():
            with contextlib.suppress(Exception):
                if not optuna.get_all_study_names(f"sqlite:///{db}"):
                    db.unlink()
        if not dir_existed and artifact_dir.exists():
            shutil.rmtree(artifact_dir, ignore_errors=True)
        raise


def make_context(
    config: Config,
    *,
    storage: optuna.storages.BaseStorage | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    inner_sampler: InnerSamplerFactory | None = None,
    check_data: Callable[[Dataset], None] | None = None,
    image_shape: tuple[int, ...] | None = None,
    sample_shape: tuple[int, ...] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> RunContext:
    """Check, then open the storage, load the data set and build the scorer (reference
    statistics and floors computed once and cached in the artifact folder). ``check_data``
    (e.g. a model's sample shape against the data's) runs before anything is created.

    A data set ``stats:PATH`` (a reference given as FID statistics: no examples, no floors)
    needs ``image_shape``, the shape of the images the model makes (after ``decode``)."""
    device = resolve_device(config.device)
    check_storage_location(config.storage)  # a bad URL or a missing folder fails here, first
    artifact_dir = artifact_dir_for(config.storage, config.artifact_dir)
    stats = stats_path(config.dataset)
    if stats is not None:
        data = stats_dataset(config, image_shape)
    else:
        data = load_dataset(config.dataset, root=config.data_root or None, seed=config.seed)
    if check_data is not None:
        check_data(data)
    seeds = records.SeedPlan.for_config(config)
    with undo_on_error(config.storage, artifact_dir):
        artifacts = open_artifacts(config.artifact_store, artifact_dir, config.storage)
        if storage is None:
            kwargs = {}
            if heartbeat_interval is not None:
                kwargs["heartbeat_interval"] = heartbeat_interval
            if grace_period is not None:
                kwargs["grace_period"] = grace_period
            storage = make_storage(config.storage, **kwargs)
        try:
            if stats is not None:  # nothing to cache, no floors
                scorer = stats_scorer(config, data, device)
            else:
                scorer = share_scorer_cache(  # a cache another machine computed is fetched
                    artifacts,
                    scorer_series(config),
                    lambda: make_scorer(config, data, artifacts.local_dir / "fid-cache", device),
                    seeds.held_out_sets,
                )
                # the floors too (cached beside the statistics), so that a cache that cannot be
                # written fails here, where what this call created is removed again
                scorer.floors(sets=seeds.held_out_sets)
        except ScorerCacheWriteError as exc:
            err = WriteError(
                f"{exc}. The FID cache is written before any trial: free space on that disk "
                "(or give the run an artifact folder elsewhere, --set artifact_dir=PATH) and "
                "run the same command again"
            )
            err.errno = exc.errno
            raise err from exc
    return RunContext(
        config=config,
        storage=storage,
        artifact_store=artifacts.optuna_store,
        artifact_dir=artifacts.local_dir,
        artifacts=artifacts,
        data=data,
        scorer=scorer,
        device=device,
        seeds=seeds,
        progress=progress,
        log=log,
        inner_sampler=inner_sampler or spaces.make_inner_sampler,
        sample_shape=None if sample_shape is None else tuple(int(v) for v in sample_shape),
        decode=decode,
    )


def stats_dataset(config: Config, image_shape: tuple[int, ...] | None) -> Dataset:
    """The stand-in data set of a reference given as statistics: no examples, the images'
    shape (the model's) and range. ValueError where no model gives the shape (``run``, which
    trains on the data, or a model without a shape of its own)."""
    if image_shape is None:
        raise ValueError(
            f"dataset={config.dataset!r} (FID statistics, no images) needs a model that says "
            "its sample shape: tune-sampling with --denoiser diffusers:PATH; `run` trains a "
            "model and needs the data themselves (a data set name or folder:PATH)"
        )
    shape = tuple(int(v) for v in image_shape)
    return Dataset(
        name=config.dataset,
        x=torch.zeros(0, *shape),
        shape=shape,
        sigma_data=0.5,  # (not used: nothing is trained on a statistics reference)
        value_range=STATS_VALUE_RANGE,
    )


def stats_scorer(config: Config, data: Dataset, device: torch.device) -> Scorer:
    """The FID scorer of a ``stats:PATH`` reference (:meth:`Scorer.from_reference_stats`)."""
    settings = ScorerSettings(
        config.inner.fid_extractor,
        config.inner.fid_num_images,
        seed=config.seed,
        kid=config.inner.kid,
        inception_weights=config.inner.fid_inception_weights or None,
    )
    return Scorer.from_reference_stats(
        stats_path(config.dataset) or "",
        settings,
        shape=data.shape,
        value_range=data.value_range,
        dataset_name=config.dataset,
        device=device,
    )


def make_scorer(config: Config, data: Dataset, cache_dir: Path, device: torch.device) -> Scorer:
    """The FID scorer of a config's data set and extractor: image samples clamped to the
    data set's declared range, floors from held-out data (or fresh samples of the data's
    analytic distribution where it has one)."""
    settings = ScorerSettings(
        config.inner.fid_extractor,
        config.inner.fid_num_images,
        seed=config.seed,
        kid=config.inner.kid,
        inception_weights=config.inner.fid_inception_weights or None,
    )
    return Scorer(
        data.x,
        data.labels,
        settings,
        dataset_name=config.dataset,
        value_range=data.value_range,
        truth=None if data.analytic is None else data.analytic.sample,
        cache_dir=cache_dir,
        device=device,
    )
