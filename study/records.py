"""What a sigmatune study stores in its Optuna storage: every key, one writer, one typed reader.

This module is the single owner of the stored layout (``"sigmatune:schema"`` = :data:`SCHEMA`).
The runner writes through the ``write_*`` functions; ``status``, ``export``, the dashboards,
the report and the benchmarks read through :func:`read_study`, which returns plain frozen
dataclasses (:class:`StudyRecord`, :class:`TrialRecord`, :class:`InnerRecord`,
:class:`HeldOut`). It imports nothing of the runner (only :mod:`sigmatune.study.config` and
:mod:`sigmatune.study.optuna_adapter`), so the dashboards may read a study through it.

Layout (``NAME`` is the outer study; inner studies are ``NAME/trial-NNNN/nfe-K``, or
``NAME/nfe-K`` for a ``tune-sampling`` study of one given model):

- outer study user attrs: schema, role ``"outer"``, kind (``"bilevel"`` or ``"sampling"``),
  the whole config, the scorer's floors, the seed plan, the model source of a sampling study,
  and the record of the attached export;
- outer trial user attrs (short, for people reading optuna-dashboard): the training
  weighting's label, its literature name, the original trial of a retry, why it failed or was
  pruned, the interim score's mean and spread per checkpoint and what the pruner compared it
  with, a one-line held-out summary per NFE; outer trial *system* attrs (long JSON, for
  programs): the objective's description, per NFE the :class:`InnerRecord`, the step
  density fitted to the tuned schedules (a ``models.placement.StepDensity`` as a dict), and
  the model's denoising error per λ bin (``models.capacity.LamErrors`` as a dict);
- inner study user attrs: schema, role ``"inner"``, its NFE, the links back to the outer
  trial, the published methods' schedules (:class:`Peer`, computed once), and the
  :class:`HeldOut` figures written when its search ends;
- inner trial user attrs: the schedule (sampler, its keyword arguments, sigmas) and the name
  of the starting point it was enqueued as.

A retry of a failed trial starts with copies of the failed trial's attributes (Optuna's
``RetryFailedTrialCallback``); :func:`begin_outer_trial` clears what belonged to the attempt.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import optuna
from optuna.trial import FrozenTrial, TrialState

from sigmatune.study import optuna_adapter as adapter
from sigmatune.study.config import Config
from sigmatune.study.urls import redact_url
from sigmatune.study.urls import redact_url as redact

SCHEMA = 2

# -- study user attrs
SCHEMA_KEY = "sigmatune:schema"
ROLE = "sigmatune:role"  # "outer" | "inner"
UID = "sigmatune:uid"  # outer: a unique id, so files of two studies never mix
KIND = "sigmatune:kind"  # outer: "bilevel" | "sampling"
CONFIG = "sigmatune:config"  # outer: Config.to_dict()
FLOORS = "sigmatune:floors"  # outer: objectives.fid.Floors.to_dict()
SEEDS = "sigmatune:seeds"  # outer: SeedPlan.to_dict()
SOURCE = "sigmatune:source"  # outer, kind "sampling": the model file or module:function
# outer, kind "sampling" with a diffusers model (diffusers:PATH): what the export of schedules
# for the model's own schedulers needs (write_model_info / StudyRecord.model_info)
MODEL_INFO = "sigmatune:model_info"
# The mark in the <head> of every HTML report sigmatune writes (what lets `report` replace one).
REPORT_MARK = '<meta name="generator" content="sigmatune report">'
HEARTBEAT = "sigmatune:heartbeat"  # trial (gRPC proxy only): [trial id, the worker's UNIX time]
EXPORT = "sigmatune:export"  # outer: the attached export's artifact ids and file names
# outer: "sigmatune:confirm:TRIAL:SEED" -> {"nfe", "values"}: the trial's configuration trained
# again with SEED, its tuned schedule's held-out FIDs (study.confirm; written as measured)
CONFIRM_PREFIX = "sigmatune:confirm:"
NFE = "sigmatune:nfe"  # inner: its NFE budget
OUTER_STUDY = "outer:study"  # inner: the outer study's name
OUTER_TRIAL = "outer:trial"  # inner: the outer trial's number
OUTER_ORIGINAL = "outer:original_trial"  # inner: the outer trial it belongs to (retries share)
HELD_OUT = "sigmatune:held_out"  # inner: HeldOut.to_dict()
PEERS = "sigmatune:peers"  # inner: {method: Peer.to_dict()}, computed once per inner study
# inner: {method: FID on the search seeds} of peers that did not fit in the trial budget
PEER_SEARCH_FIDS = "sigmatune:peer_search_fids"
# inner, inner.objective = "paired": {method: the paired bound on the search seeds} of those
PEER_SEARCH_PAIRED = "sigmatune:peer_search_paired"

# -- outer trial user attrs (short)
LABEL = "sigmatune:label"
NAME = "sigmatune:name"  # a literature configuration's name, or absent
ORIGINAL_TRIAL = "sigmatune:original_trial"
FAIL_REASON = "sigmatune:fail_reason"
PRUNE_REASON = "sigmatune:prune_reason"
# the interim score's seed-to-seed spread at each checkpoint, beside its mean (the trial's
# intermediate value): {str(nimg): spread}, 4 significant digits (write_interim)
INTERIM_SPREAD = "sigmatune:interim_spread"
# what the pruner compared at each rung where it would prune: {str(nimg): {"cut", "spread",
# "pruned"}} (write_prune_cut); pruned false: kept within the interim's spread
PRUNE_CUT = "sigmatune:prune_cut"
NOTE = "sigmatune:note"  # e.g. "same W(lambda) as trial 0"
MODEL_ARTIFACT = "sigmatune:model_artifact"
TRAIN = "sigmatune:train"  # {"resumed_from_nimg", "nimg_this_process"}
SUMMARY_PREFIX = "fid nfe "  # "fid nfe 5": a one-line held-out summary

# -- outer trial system attrs (long)
OBJECTIVE = "sigmatune:objective"  # DiffusionObjective.describe()
INNER = "sigmatune:inner"  # {str(nfe): InnerRecord.to_dict()}
GAPS = "sigmatune:gaps"  # sampling studies: {str(nfe): gap-closed figures}
DENSITY = "sigmatune:density"  # {"sampler", "nfe", "sigma_min", "sigma_max", "masses"}
# the trained model's denoising error per lam bin: models.capacity.LamErrors.to_dict()
# ({"edges", "error", "stderr", "per_bin", "reference"})
LAM_ERRORS = "sigmatune:lam_errors"

# -- inner trial user attrs (the trial's value is ln FID, which the GP models far better
# than FID spanning orders of magnitude; the FID itself is kept here)
FID = "sigmatune:fid"
SAMPLER = "sigmatune:sampler"
SAMPLER_KWARGS = "sigmatune:sampler_kwargs"
SIGMAS = "sigmatune:sigmas"
START = "sigmatune:start"  # the starting point / baseline it was enqueued as
# inner.objective = "paired": the paired bound (the trial's value is its ln) and its parts,
# study.scoring.PairedScore.to_dict(); the FID on the search seeds stays under FID
PAIRED = "sigmatune:paired"

# The schedules every inner study's held-out figures compare (issue "fair baselines"):
# karras rho=7 on the run's full range, and karras rho=7 / loglinear on the tuned range.
HELD_OUT_BASELINES = ("karras_rho7", "karras_rho7_same_range", "loglinear_same_range")
EXPORT_HELD_OUT_KEYS = (
    "seeds",
    "tuned",
    "tuned_spread",
    *HELD_OUT_BASELINES,
    "floor",
    "floor_spread",
)


class ObjectiveDescription(TypedDict):
    """``objectives.loss.DiffusionObjective.describe()``: a training objective as JSON."""

    parameterisation: str
    sigma_data: float | None
    density: dict[str, Any]
    weighting: dict[str, Any]
    adaptive: dict[str, Any] | None
    sigma_min: float
    sigma_max: float


class StudyLayoutError(ValueError):
    """A study that is not a sigmatune study of this schema."""


# ============================================================================================
# Seeds


@dataclass(frozen=True)
class SeedPlan:
    """Which seeds generate which images (one seed per image, edm2's convention).

    The search ranks every inner trial on the same ``search_images`` seeds from
    ``search_start`` (common random numbers; by default all ``num_images`` of them); every
    reported figure is re-scored on ``held_out_sets`` further sets of ``num_images`` seeds
    each, from ``held_out_start = search_start + num_images`` on, disjoint from the search.
    """

    search_start: int
    num_images: int
    held_out_sets: int
    search_images: int = 0  # 0: num_images

    def __post_init__(self) -> None:
        if not 0 <= self.search_images <= self.num_images:
            raise ValueError(
                f"search_images must be in [0, num_images={self.num_images}], "
                f"but got {self.search_images}"
            )
        if self.search_images == 0:
            object.__setattr__(self, "search_images", self.num_images)

    @classmethod
    def for_config(cls, config: Config) -> SeedPlan:
        return cls(
            search_start=1_000_000 * int(config.seed),
            num_images=int(config.inner.fid_num_images),
            held_out_sets=int(config.inner.held_out_sets),
            search_images=int(config.inner.search_images),
        )

    @property
    def search(self) -> range:
        return range(self.search_start, self.search_start + self.search_images)

    @property
    def held_out_start(self) -> int:
        return self.search_start + self.num_images

    def held_out(self, k: int) -> range:
        """The seeds of held-out set ``k`` (0-based)."""
        if not 0 <= k < self.held_out_sets:
            raise ValueError(f"k must be in [0, {self.held_out_sets}), but got {k=}")
        start = self.held_out_start + k * self.num_images
        return range(start, start + self.num_images)

    @property
    def search_note(self) -> str:
        """`` (the search ranks on N)`` where the search uses fewer images than a held-out
        set, else empty: for the lines that name the images a figure is scored on."""
        n = self.search_images
        return "" if n == self.num_images else f" (the search ranks on {n})"

    def export(self) -> list[int]:
        """``[first held-out seed, images per set, number of sets]`` (the export contract)."""
        return [self.held_out_start, self.num_images, self.held_out_sets]

    def to_dict(self) -> dict[str, int]:
        return {
            "search_start": self.search_start,
            "num_images": self.num_images,
            "held_out_sets": self.held_out_sets,
            "search_images": self.search_images,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeedPlan:
        """From :meth:`to_dict` (a study stored before ``search_images`` searched on all)."""
        return cls(
            int(d["search_start"]),
            int(d["num_images"]),
            int(d["held_out_sets"]),
            int(d.get("search_images") or 0),
        )


# ============================================================================================
# Records


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values))


def _spread(values: Sequence[float]) -> float:
    """Sample standard deviation (0 for one value)."""
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Schedule:
    """A schedule as stored: sampler, its keyword arguments, sigmas (descending, last 0)."""

    sampler: str
    sigmas: tuple[float, ...]
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[Any, ...]:
        """What identifies the schedule (hashable)."""
        return (self.sampler, self.sigmas, tuple(sorted(self.sampler_kwargs.items())))

    @property
    def sigma_range(self) -> tuple[float, float]:
        """``(smallest positive sigma, largest sigma)``."""
        return float(self.sigmas[-2]), float(self.sigmas[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "sigmas": [float(s) for s in self.sigmas],
            "sampler_kwargs": dict(self.sampler_kwargs),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schedule:
        return cls(
            str(d["sampler"]),
            tuple(float(s) for s in d["sigmas"]),
            dict(d.get("sampler_kwargs") or {}),
        )


@dataclass(frozen=True)
class HeldOut:
    """FIDs of an inner study's schedules on held-out seed sets, beside the scorer's floor.

    ``scores[name]`` holds one FID per held-out set for ``"tuned"`` (the search's best
    schedule) and each baseline of :data:`HELD_OUT_BASELINES` (and any peer method scored).
    """

    seeds: tuple[int, int, int]  # first seed, images per set, number of sets
    scores: dict[str, tuple[float, ...]]
    floor: float | None  # None: unknown (a reference given as statistics has no floor)
    floor_spread: float | None
    tuned_trial: int | None = None  # the inner trial whose schedule is "tuned"
    tuned_origin: str | None = None  # "search" or the starting point / peer it came from

    def mean(self, name: str) -> float | None:
        values = self.scores.get(name)
        return _mean(values) if values else None

    def spread(self, name: str) -> float | None:
        values = self.scores.get(name)
        return _spread(values) if values else None

    def at_floor(self, name: str) -> bool:
        """Within the floor's spread (``fid <= floor + 2 * floor_spread``; the same rule as
        ``objectives.fid.Floors.at_floor``)."""
        value = self.mean(name)
        if value is None or self.floor is None or self.floor_spread is None:
            return False  # an unknown floor: nothing is said to be at it
        return value <= self.floor + 2 * self.floor_spread

    @property
    def resolution(self) -> float:
        """The smallest ratio of two scores told apart at two floor spreads
        (:func:`floor_resolution`; ``inf`` where the floor is unknown)."""
        if self.floor is None or self.floor_spread is None:
            return math.inf
        return floor_resolution(self.floor, self.floor_spread)

    def ratio(self, name: str, reference: str) -> float | None:
        """``mean(name) / mean(reference)``; None where either is missing, where the reference
        is 0, or where both are at the floor (no ratio between two scores at the floor)."""
        a, b = self.mean(name), self.mean(reference)
        if a is None or b is None or b <= 0 or (self.at_floor(name) and self.at_floor(reference)):
            return None
        return a / b

    def export(self) -> dict[str, Any]:
        """The export contract: exactly :data:`EXPORT_HELD_OUT_KEYS`, plus any peer method's
        mean under its own name."""
        out: dict[str, Any] = {"seeds": list(self.seeds)}
        out["tuned"] = self.mean("tuned")
        out["tuned_spread"] = self.spread("tuned")
        for name in HELD_OUT_BASELINES:
            out[name] = self.mean(name)
        for name in sorted(self.scores):
            if name not in out and name != "tuned":
                out[name] = self.mean(name)
        out["floor"] = self.floor
        out["floor_spread"] = self.floor_spread
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "scores": {k: list(v) for k, v in self.scores.items()},
            "floor": self.floor,
            "floor_spread": self.floor_spread,
            "tuned_trial": self.tuned_trial,
            "tuned_origin": self.tuned_origin,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeldOut:
        seeds = tuple(int(s) for s in d["seeds"])
        if len(seeds) != 3:
            raise StudyLayoutError(f"held-out seeds must be [first, per set, sets], got {seeds}")
        return cls(
            seeds=(seeds[0], seeds[1], seeds[2]),
            scores={k: tuple(float(x) for x in v) for k, v in d["scores"].items()},
            floor=None if d.get("floor") is None else float(d["floor"]),
            floor_spread=None if d.get("floor_spread") is None else float(d["floor_spread"]),
            tuned_trial=None if d.get("tuned_trial") is None else int(d["tuned_trial"]),
            tuned_origin=None if d.get("tuned_origin") is None else str(d["tuned_origin"]),
        )


@dataclass(frozen=True)
class Peer:
    """A published step-placement method's schedule for one inner study (e.g. GITS, LD3 of
    ``models.placement``), what it cost and what it was run with."""

    schedule: Schedule
    costs: dict[str, float]  # denoiser_calls, denoiser_evaluations, seconds
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.to_dict(), "costs": dict(self.costs), "info": self.info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Peer:
        return cls(
            Schedule.from_dict(d["schedule"]),
            {k: float(v) for k, v in d["costs"].items()},
            dict(d.get("info") or {}),
        )


@dataclass(frozen=True)
class InnerRecord:
    """The outcome of one inner study: the search's best, the schedules compared, held-out."""

    nfe: int
    study_name: str
    search_fid: float  # the search's minimum on the search seeds (optimistic: shown as such)
    search_trial: int  # the inner trial that reached it
    params: dict[str, Any]
    schedules: dict[str, Schedule]  # "tuned" and every baseline scored on held-out seeds
    search_baselines: dict[str, float]  # starting points' FIDs on the search seeds
    held_out: HeldOut | None
    at_bound: tuple[str, ...] = ()  # params of the best trial on a bound of the space
    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # peer methods' costs
    # where the tuned schedule came from: "search" (a trial the sampler proposed) or the
    # name of the starting point, polish or peer method it is (then search_trial is -1 for
    # a peer scored beside the trials, not as one)
    origin: str = "search"

    @property
    def tuned(self) -> Schedule:
        return self.schedules["tuned"]

    @property
    def value(self) -> float:
        """What is reported: the held-out mean of the tuned schedule (else the search's)."""
        held = self.held_out.mean("tuned") if self.held_out is not None else None
        return self.search_fid if held is None else held

    def to_dict(self) -> dict[str, Any]:
        return {
            "nfe": self.nfe,
            "study_name": self.study_name,
            "search_fid": self.search_fid,
            "search_trial": self.search_trial,
            "params": dict(self.params),
            "schedules": {k: s.to_dict() for k, s in self.schedules.items()},
            "search_baselines": dict(self.search_baselines),
            "held_out": None if self.held_out is None else self.held_out.to_dict(),
            "at_bound": list(self.at_bound),
            "costs": {k: dict(v) for k, v in self.costs.items()},
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InnerRecord:
        held = d.get("held_out")
        return cls(
            nfe=int(d["nfe"]),
            study_name=str(d["study_name"]),
            search_fid=float(d["search_fid"]),
            search_trial=int(d["search_trial"]),
            params=dict(d.get("params") or {}),
            schedules={k: Schedule.from_dict(v) for k, v in d["schedules"].items()},
            search_baselines={k: float(v) for k, v in (d.get("search_baselines") or {}).items()},
            held_out=None if held is None else HeldOut.from_dict(held),
            at_bound=tuple(d.get("at_bound") or ()),
            costs={k: dict(v) for k, v in (d.get("costs") or {}).items()},
            origin=str(d.get("origin") or "search"),
        )


@dataclass(frozen=True)
class TrialRecord:
    """An outer trial as stored: its training weighting, state, and per NFE its inner record."""

    number: int
    trial_id: int
    state: str
    values: tuple[float, ...] | None
    objective: ObjectiveDescription | None
    name: str | None  # literature configuration's name (e.g. "edm"), or None
    original_trial: int
    retry_of: int | None
    fail_reason: str | None
    prune_reason: str | None
    note: str | None
    model_artifact: str | None
    train: dict[str, int]
    inner: dict[int, InnerRecord]
    params: dict[str, Any]
    running_since: str | None = None  # ISO time a RUNNING trial started
    interim: dict[int, float] = field(default_factory=dict)  # training images -> interim FID
    # training images -> the interim's seed-to-seed spread (write_interim)
    interim_spread: dict[int, float] = field(default_factory=dict)
    # training images -> the pruner's comparison there (write_prune_cut)
    prune_cut: dict[int, dict[str, Any]] = field(default_factory=dict)
    gaps: dict[int, dict[str, Any]] = field(default_factory=dict)  # sampling studies
    # the step density over lam fitted to the tuned schedules (StepDensity.to_dict() with
    # "sampler" and "nfe"), for schedules at NFE budgets that were not tuned; or None
    density: dict[str, Any] | None = None
    # where the model spends its capacity: its denoising error per lam bin
    # (models.capacity.LamErrors.to_dict(); LamErrors.from_dict reads it back), or None
    lam_errors: dict[str, Any] | None = None

    @property
    def value(self) -> float | None:
        return None if not self.values else self.values[0]

    @property
    def is_edm(self) -> bool:
        return self.name == "edm"

    @property
    def label(self) -> str:
        return objective_label(self.objective)

    @property
    def reason(self) -> str | None:
        return self.fail_reason or self.prune_reason


@dataclass(frozen=True)
class StudyRecord:
    """An outer study with its trials (and their inner records)."""

    name: str
    study_id: int
    uid: str
    kind: str  # "bilevel" | "sampling"
    config: Config
    floors: dict[str, Any] | None  # objectives.fid.Floors.to_dict()
    seeds: SeedPlan
    source: str | None
    trials: list[TrialRecord]
    study_ids: dict[str, int]  # study name -> storage id (for links in notes)
    export: dict[str, Any] | None = None
    directions: tuple[str, ...] = ("minimize",)
    # a sampling study's diffusers model (write_model_info): its scheduler config and range
    model_info: dict[str, Any] | None = None
    # trial number -> training seed -> {"nfe", "values"}: ``sigmatune confirm``'s models
    confirmations: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)

    @property
    def nfe_budgets(self) -> list[int]:
        return list(self.config.inner.nfe_budgets)

    @property
    def primary_nfe(self) -> int:
        return self.nfe_budgets[0]

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.values]

    @property
    def best(self) -> TrialRecord | None:
        """The complete trial with the least value (the first objective's, when several)."""
        done = self.complete
        return min(done, key=lambda t: (t.values[0], t.number)) if done else None

    @property
    def edm(self) -> TrialRecord | None:
        return next((t for t in self.trials if t.is_edm), None)

    def trial(self, number: int) -> TrialRecord:
        for t in self.trials:
            if t.number == number:
                return t
        raise ValueError(
            f"study {self.name!r} has no trial number={number}; "
            f"valid: {', '.join(str(t.number) for t in self.trials) or 'none'}"
        )

    @property
    def sigma_range(self) -> tuple[float, float]:
        return float(self.config.sigma_min), float(self.config.sigma_max)

    def display_config(self) -> dict[str, Any]:
        """The config as shown to people: the storage URL without its password."""

        out = self.config.to_dict()
        out["storage"] = redact(out["storage"])
        return out


# ============================================================================================
# Labels


def objective_label(desc: Mapping[str, Any] | None) -> str:
    """A short name of a training weighting, e.g. ``edm unit lognormal(-1.2,1.2)``."""
    if not desc:
        return "?"

    def fam(d: Mapping[str, Any]) -> str:
        vals = []
        for v in (d.get("params") or {}).values():
            if isinstance(v, (list, tuple)):
                vals.append("[" + ",".join(f"{x:.3g}" for x in v) + "]")
            elif isinstance(v, (int, float)):
                vals.append(f"{v:.3g}")
            elif v is not None:
                vals.append(str(v))
        return f"{d['name']}({','.join(vals)})" if vals else str(d["name"])

    adaptive = desc.get("adaptive")
    extra = f" +{fam(adaptive)}" if adaptive else ""
    if desc["weighting"].get("name") == desc["density"].get("name") == "wlam":
        # a point of the "weighting" space: W(lambda)'s shape and its split into p
        shape = dict(desc["weighting"].get("params") or {})
        for key in ("parameterisation", "sigma_data"):
            shape.pop(key, None)
        sampling, split = shape.pop("sampling", None), shape.pop("split", None)
        if sampling is not None:  # p a shape of its own
            p_shape = {k: v for k, v in dict(sampling).items() if k != "split"}
            split_text = f" {fam({'name': 'p', 'params': p_shape})}"
        else:
            split_text = "" if split is None else f" split {float(split):.3g}"
        W = fam({"name": "W", "params": shape})
        return f"{desc['parameterisation']} {W}{split_text}{extra}"
    return f"{desc['parameterisation']} {fam(desc['weighting'])} {fam(desc['density'])}{extra}"


def fid_text(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def floor_resolution(floor: float, floor_spread: float) -> float:
    """``(floor + 2 * floor_spread) / floor``: the smallest ratio between two scores that is
    not inside the floor's spread (``objectives.fid.resolution``, the same formula, kept here
    so that readers of a study need not import the scorer); ``inf`` where the floor is not
    positive or a figure is not finite."""
    floor, floor_spread = float(floor), float(floor_spread)
    if not (math.isfinite(floor) and math.isfinite(floor_spread)) or floor <= 0:
        return math.inf
    return (floor + 2 * floor_spread) / floor


_FLOOR_HOW = {  # objectives.fid.FLOOR_METHODS, as a floor's line says it
    "truth": "fresh samples of the true distribution",
    "disjoint": "disjoint held-out sets",
    "overlapping": "overlapping held-out sets",
    "extrapolated": "extrapolated from subsets of the images",
}


def floor_text(floors: Mapping[str, Any], num_images: int | None = None) -> str:
    """The stored floors (``objectives.fid.Floors.to_dict()``) in one line, as status, the
    report and the dashboard's note print them: the floor ± its spread, the images each floor
    value stands for and how they were drawn, and the resolution, e.g. ``floor (real vs real)
    1.43 ± 0.54 on 1,000 images (extrapolated from subsets of the 797 held-out images, fewer
    than a score uses); resolution x1.75``. A floor from fewer images than the scores'
    ``num_images`` (a study stored by an older sigmatune) says so: it is biased high."""
    floor, spread = floors["floor"], floors["floor_spread"]
    text = f"floor (real vs real) {fid_text(floor)} ± {fid_text(spread, 2)}"
    n, method = floors.get("floor_num_images"), floors.get("floor_method")
    if n is not None:
        text += f" on {int(n):,} images"
        if method in _FLOOR_HOW:
            how = _FLOOR_HOW[method]
            m = int(floors.get("held_out_images") or 0)
            if method == "extrapolated":
                how = f"{how[: -len('images')]}{m:,} held-out images, fewer than a score uses"
            elif m:
                how += f" of {m:,}"
            text += f" ({how})"
        if num_images is not None and int(n) < int(num_images):
            text += (
                f" — fewer than a score's {int(num_images):,}: this floor is biased high "
                "(measured before floors of the same size; recompute it)"
            )
    if "resolution" in floors:  # stored (None: infinite)
        stored = floors["resolution"]
        resolution = math.inf if stored is None else float(stored)
    else:  # floors stored before they carried it
        resolution = floor_resolution(floor, spread)
    return f"{text}; resolution x{fid_text(float(resolution), 3)}"


def worse_budgets(inner: Mapping[int, InnerRecord]) -> list[str]:
    """Budgets whose tuned schedule scores worse (held-out) than that of a smaller budget of
    the same model beyond both spreads: more steps should never score worse, so each is a
    search that missed what the smaller budget found."""
    out = []
    budgets = sorted(k for k, r in inner.items() if r.held_out is not None)
    for i, big in enumerate(budgets):
        hb = inner[big].held_out
        for small in budgets[:i]:
            hs = inner[small].held_out
            a, b = hb.mean("tuned"), hs.mean("tuned")
            if a is None or b is None:
                continue
            if a - b > (hb.spread("tuned") or 0.0) + (hs.spread("tuned") or 0.0):
                out.append(
                    f"NFE {big} scores worse than NFE {small} ({fid_text(a)} > {fid_text(b)} "
                    "beyond both spreads): its search missed what the smaller budget found; "
                    "more inner trials (--inner-trials) may find it"
                )
                break
    return out


def held_out_line(record: InnerRecord) -> str:
    """One line of held-out figures: tuned ± spread, the fair baselines, the floor, and the
    gain split into "σ range" (karras on the tuned range / on the full range) and "step
    placement" (tuned / karras on the tuned range); no ratio between two scores at the floor."""
    h = record.held_out
    if h is None:
        return f"search {fid_text(record.search_fid)} (no held-out figures)"
    tuned = h.mean("tuned")
    text = f"{fid_text(tuned)} ± {fid_text(h.spread('tuned'), 2)}"
    if h.at_floor("tuned"):
        text += " (at the floor)"
    parts = [
        f"karras ρ=7 {fid_text(h.mean('karras_rho7'))}",
        f"same range: karras {fid_text(h.mean('karras_rho7_same_range'))}, "
        f"loglinear {fid_text(h.mean('loglinear_same_range'))}",
    ]
    for name in sorted(h.scores):
        if name not in ("tuned", *HELD_OUT_BASELINES):
            parts.append(f"{name} {fid_text(h.mean(name))}")
    gains = [f"from {record.origin}" if record.origin != "search" else "from the search"]
    range_gain = h.ratio("karras_rho7_same_range", "karras_rho7")
    placement_gain = h.ratio("tuned", "karras_rho7_same_range")
    if range_gain is not None:
        gains.append(f"σ range x{range_gain:.3g}")
    if placement_gain is not None:
        gains.append(f"step placement x{placement_gain:.3g}")
    elif h.at_floor("tuned") and h.at_floor("karras_rho7_same_range"):
        gains.append("step placement: both at the floor")
    floor = (
        "floor unknown (the reference is statistics)"
        if h.floor is None
        else f"floor {fid_text(h.floor)} ± {fid_text(h.floor_spread, 2)}, "
        f"resolution x{fid_text(h.resolution, 3)}"
    )
    return f"{text} ({'; '.join(parts)}; {floor})" + (f" [{', '.join(gains)}]" if gains else "")


# ============================================================================================
# Writer


def init_outer_study(
    study: optuna.Study,
    config: Config,
    *,
    kind: str = "bilevel",
    floors: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> None:
    """Mark a new outer study and store what rebuilds and explains it; the unique id comes
    last, so a study that has one is complete (``run.wait_until_initialised``)."""

    study.set_user_attr(SCHEMA_KEY, SCHEMA)
    study.set_user_attr(ROLE, "outer")
    study.set_user_attr(KIND, kind)
    study.set_user_attr(CONFIG, stored_config_dict(config))
    study.set_user_attr(SEEDS, SeedPlan.for_config(config).to_dict())
    if floors is not None:
        study.set_user_attr(FLOORS, dict(floors))
    if source is not None:
        study.set_user_attr(SOURCE, source)
    study.set_user_attr(UID, uuid.uuid4().hex)  # last: its presence means "initialised"


def stored_config_dict(config: Config) -> dict[str, Any]:
    """The config as a study stores it: the storage URL without its password (anyone who
    can read the study, or its dashboard, could read it; nothing needs it back: a study is
    always reopened with the URL given on the command line, ``storage`` being resumable)."""

    out = config.to_dict()
    out["storage"] = redact_url(out["storage"])
    return out


def study_uid(study: optuna.Study) -> str:
    """The unique id of an outer study (written when it was created)."""
    uid = study.user_attrs.get(UID)
    if not uid:
        raise StudyLayoutError(f"study {study.study_name!r} has no {UID!r}")
    return str(uid)


def stored_config(study: optuna.Study) -> Config | None:
    """The config an existing outer study was made with (None for a study without one)."""
    raw = study.user_attrs.get(CONFIG)
    return None if raw is None else Config.from_dict(raw, source=f"stored in {study.study_name!r}")


def init_inner_study(study: optuna.Study, nfe: int, link: Mapping[str, Any] | None = None) -> None:
    study.set_user_attr(SCHEMA_KEY, SCHEMA)
    study.set_user_attr(ROLE, "inner")
    study.set_user_attr(NFE, int(nfe))
    for key in (OUTER_STUDY, OUTER_TRIAL, OUTER_ORIGINAL):
        if link and key in link:
            study.set_user_attr(key, link[key])


def outer_link(study_name: str, trial_number: int, original: int) -> dict[str, Any]:
    return {OUTER_STUDY: study_name, OUTER_TRIAL: trial_number, OUTER_ORIGINAL: original}


def write_schedule(trial: optuna.trial.Trial, schedule: Schedule) -> None:
    """An inner trial's schedule, before it is scored."""
    trial.set_user_attr(SAMPLER, schedule.sampler)
    trial.set_user_attr(SAMPLER_KWARGS, dict(schedule.sampler_kwargs))
    trial.set_user_attr(SIGMAS, [float(s) for s in schedule.sigmas])


def write_inner_fid(trial: optuna.trial.Trial, fid: float) -> None:
    trial.set_user_attr(FID, float(fid))


def write_inner_paired(trial: optuna.trial.Trial, paired: Mapping[str, float]) -> None:
    trial.set_user_attr(PAIRED, {k: float(v) for k, v in paired.items()})


def inner_objective_value(trial: FrozenTrial) -> float | None:
    """What an inner trial was ranked by: the paired bound where it has one, else its FID
    on the search seeds (None: not scored)."""
    paired = trial.user_attrs.get(PAIRED)
    if paired is not None:
        return float(paired["value"])
    fid = trial.user_attrs.get(FID)
    return None if fid is None else float(fid)


def write_held_out(study: optuna.Study, held_out: HeldOut) -> None:
    study.set_user_attr(HELD_OUT, held_out.to_dict())


def read_held_out(study: optuna.Study) -> HeldOut | None:
    raw = study.user_attrs.get(HELD_OUT)
    return None if raw is None else HeldOut.from_dict(raw)


def write_peer(study: optuna.Study, name: str, peer: Peer) -> None:
    """One published method's schedule for an inner study, beside those already stored."""
    stored = dict(study.user_attrs.get(PEERS) or {})
    stored[name] = peer.to_dict()
    study.set_user_attr(PEERS, stored)


def write_peer_search_fids(study: optuna.Study, fids: Mapping[str, float]) -> None:
    """Search-seed FIDs of peers scored beside the trials (they did not fit the budget)."""
    study.set_user_attr(PEER_SEARCH_FIDS, {k: float(v) for k, v in fids.items()})


def read_peer_search_fids(study: optuna.Study) -> dict[str, float]:
    return {k: float(v) for k, v in (study.user_attrs.get(PEER_SEARCH_FIDS) or {}).items()}


def write_peer_search_paired(study: optuna.Study, values: Mapping[str, float]) -> None:
    """The paired bounds on the search seeds of the peers of :func:`write_peer_search_fids`."""
    study.set_user_attr(PEER_SEARCH_PAIRED, {k: float(v) for k, v in values.items()})


def read_peer_search_paired(study: optuna.Study) -> dict[str, float]:
    return {k: float(v) for k, v in (study.user_attrs.get(PEER_SEARCH_PAIRED) or {}).items()}


def read_peers(study: optuna.Study) -> dict[str, Peer]:
    """The published methods' schedules stored on an inner study, by method name."""
    return {k: Peer.from_dict(v) for k, v in (study.user_attrs.get(PEERS) or {}).items()}


def begin_outer_trial(
    trial: optuna.trial.Trial,
    objective: ObjectiveDescription,
    original: int,
    name: str | None,
) -> None:
    """What an outer trial is, written first; clears what a failed attempt left on a retry."""
    for key in (FAIL_REASON, PRUNE_REASON, NOTE, MODEL_ARTIFACT, TRAIN):
        if trial.user_attrs.get(key) is not None:
            trial.set_user_attr(key, None)
    adapter.set_trial_system_attr(trial, INNER, None)
    adapter.set_trial_system_attr(trial, DENSITY, None)
    adapter.set_trial_system_attr(trial, LAM_ERRORS, None)
    trial.set_user_attr(SCHEMA_KEY, SCHEMA)
    trial.set_user_attr(ORIGINAL_TRIAL, int(original))
    trial.set_user_attr(LABEL, objective_label(objective))
    if name is not None:
        trial.set_user_attr(NAME, name)
    adapter.set_trial_system_attr(trial, OBJECTIVE, dict(objective))


def write_note(trial: optuna.trial.Trial, note: str) -> None:
    trial.set_user_attr(NOTE, note)


def write_training(trial: optuna.trial.Trial, resumed_from_nimg: int, nimg: int) -> None:
    trial.set_user_attr(
        TRAIN,
        {"resumed_from_nimg": int(resumed_from_nimg), "nimg_this_process": int(nimg)},
    )


def write_model_artifact(trial: optuna.trial.Trial, artifact_id: str) -> None:
    trial.set_user_attr(MODEL_ARTIFACT, artifact_id)


def write_inner_records(trial: optuna.trial.Trial, records: Mapping[int, InnerRecord]) -> None:
    """The inner records of an outer trial (long, system attr) and one short line per NFE."""
    adapter.set_trial_system_attr(trial, INNER, {str(k): r.to_dict() for k, r in records.items()})
    for k, r in records.items():
        trial.set_user_attr(f"{SUMMARY_PREFIX}{k}", held_out_line(r))


def write_density(trial: optuna.trial.Trial, density: Mapping[str, Any] | None) -> None:
    """The step density fitted to an outer trial's tuned schedules (nothing when None)."""
    if density is not None:
        adapter.set_trial_system_attr(trial, DENSITY, dict(density))


def write_lam_errors(trial: optuna.trial.Trial, lam_errors: Mapping[str, Any]) -> None:
    """The trained model's denoising error per lam bin (``LamErrors.to_dict()``)."""
    keys = {"edges", "error", "stderr", "per_bin", "reference"}
    if set(lam_errors) != keys:
        raise ValueError(
            f"lam_errors must have the keys {sorted(keys)} (LamErrors.to_dict()), but got "
            f"{sorted(lam_errors)}"
        )
    adapter.set_trial_system_attr(trial, LAM_ERRORS, dict(lam_errors))


def write_model_info(study: optuna.Study, info: Mapping[str, Any]) -> None:
    """Store what a sampling study's diffusers model is (:data:`MODEL_INFO`): ``kind``,
    ``prediction_type``, ``sigma_min``, ``sigma_max``, ``shape``, ``image_shape`` and its
    ``scheduler_config``, from which ``export --format diffusers`` computes the arguments of
    the model's own schedulers."""
    study.set_user_attr(MODEL_INFO, dict(info))


def add_sampling_trial(
    study: optuna.Study,
    inner: Mapping[int, InnerRecord],
    *,
    gaps: Mapping[int, Mapping[str, Any]] | None = None,
    density: Mapping[str, Any] | None = None,
) -> None:
    """Record one ``tune-sampling`` of a given model as a COMPLETE trial of its study of
    kind "sampling" (no training weighting; the inner records as for an outer trial)."""
    primary = next(iter(inner.values()))
    user_attrs: dict[str, Any] = {SCHEMA_KEY: SCHEMA, LABEL: "given model"}
    user_attrs.update({f"{SUMMARY_PREFIX}{k}": held_out_line(r) for k, r in inner.items()})
    system_attrs: dict[str, Any] = {INNER: {str(k): r.to_dict() for k, r in inner.items()}}
    if gaps:
        system_attrs[GAPS] = {str(k): dict(v) for k, v in gaps.items()}
    if density is not None:
        system_attrs[DENSITY] = dict(density)
    study.add_trial(
        optuna.trial.create_trial(
            value=primary.value, user_attrs=user_attrs, system_attrs=system_attrs
        )
    )


def write_failure(trial: optuna.trial.BaseTrial, exc: BaseException) -> None:
    """Why a trial failed, where optuna-dashboard and ``sigmatune status`` show it."""
    try:
        trial.set_user_attr(FAIL_REASON, f"{type(exc).__name__}: {exc}")
    except Exception:  # the storage itself may be what failed
        pass


def write_prune_reason(trial: optuna.trial.Trial, reason: str) -> None:
    trial.set_user_attr(PRUNE_REASON, reason)


def _short(x: float) -> float:
    return float(f"{float(x):.4g}")


def write_interim(trial: optuna.trial.Trial, nimg: int, spread: float) -> None:
    """The interim score's seed-to-seed spread (sample std over the held-out seed sets) at
    ``nimg`` training images, to 4 significant digits (short: a user attr stays readable in
    optuna-dashboard); its mean is the intermediate value the trial reports. Written before
    the pruner is asked, which reads it (:func:`interim_spreads`)."""
    stored = dict(trial.user_attrs.get(INTERIM_SPREAD) or {})
    stored[str(int(nimg))] = _short(spread)
    trial.set_user_attr(INTERIM_SPREAD, stored)


def prune_cuts(trial: optuna.trial.BaseTrial) -> dict[int, dict[str, Any]]:
    """Training images -> what the pruner compared there (:func:`write_prune_cut`)."""
    return {int(k): dict(v) for k, v in (trial.user_attrs.get(PRUNE_CUT) or {}).items()}


def interim_spreads(trial: optuna.trial.BaseTrial) -> dict[int, float]:
    """Training images -> the interim score's seed-to-seed spread (:func:`write_interim`)."""
    stored = trial.user_attrs.get(INTERIM_SPREAD) or {}
    return {int(k): float(v) for k, v in stored.items()}


def write_prune_cut(
    study: optuna.Study,
    trial: FrozenTrial,
    step: int,
    *,
    cut: float,
    spread: float,
    pruned: bool,
) -> None:
    """What the pruner compared where it would prune ``trial`` at ``step``: the ``cut`` its
    interim value (the intermediate value there) had to reach, the interim's ``spread``, and
    whether it was pruned (false: kept, within the spread of the cut); 4 significant digits.
    Written from the pruner, which holds the trial as a ``FrozenTrial``."""
    stored = dict(trial.user_attrs.get(PRUNE_CUT) or {})
    stored[str(int(step))] = {"cut": _short(cut), "spread": _short(spread), "pruned": bool(pruned)}
    adapter.set_frozen_trial_user_attr(study, trial, PRUNE_CUT, stored)


def write_export(
    storage: optuna.storages.BaseStorage, study_id: int, record: Mapping[str, Any]
) -> None:
    """The attached export's record on the outer study (by its storage id)."""
    storage.set_study_user_attr(study_id, EXPORT, dict(record))


# ============================================================================================
# Reader


def outer_study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Names of the sigmatune outer studies in a storage (both kinds)."""
    return [s.study_name for s in storage.get_all_studies() if s.user_attrs.get(ROLE) == "outer"]


def write_confirmation(
    storage: optuna.storages.BaseStorage,
    study_id: int,
    trial: int,
    seed: int,
    result: Mapping[str, Any],
) -> None:
    """Store one retrained model's held-out figures (``study.confirm``)."""
    storage.set_study_user_attr(study_id, f"{CONFIRM_PREFIX}{int(trial)}:{int(seed)}", dict(result))


def confirmed_figure(study: StudyRecord, trial: TrialRecord) -> dict[str, Any] | None:
    """The trial's figure after ``sigmatune confirm``: the held-out FID of its tuned schedule
    at the primary NFE, the mean over its models (the study's and those trained again) and the
    standard deviation over them; None when it has no confirmation."""
    nfe = study.primary_nfe
    found = {
        seed: r["values"]
        for seed, r in sorted(study.confirmations.get(trial.number, {}).items())
        if int(r.get("nfe", -1)) == nfe
    }
    record = trial.inner.get(nfe)
    if not found or record is None:
        return None
    own = record.held_out.scores["tuned"] if record.held_out is not None else (record.value,)
    means = [_mean(own), *(_mean(v) for v in found.values())]
    return {
        "nfe": nfe,
        "seeds": [int(study.config.seed), *found],
        "mean": _mean(means),
        "spread": _spread(means),
        "models": len(means),
    }


def read_confirmations(
    storage: optuna.storages.BaseStorage, study_id: int
) -> dict[int, dict[int, dict[str, Any]]]:
    """The stored confirmations: trial number -> training seed -> ``{"nfe", "values"}``."""
    out: dict[int, dict[int, dict[str, Any]]] = {}
    for key, value in storage.get_study_user_attrs(study_id).items():
        if not key.startswith(CONFIRM_PREFIX):
            continue
        try:
            trial, seed = (int(x) for x in key[len(CONFIRM_PREFIX) :].split(":"))
        except ValueError:
            continue
        out.setdefault(trial, {})[seed] = dict(value)
    return out


def resolve_study_name(
    storage: optuna.storages.BaseStorage, storage_url: str, study_name: str | None
) -> str:
    """``study_name``, checked to be a sigmatune outer study, or the only one in the storage."""

    names = outer_study_names(storage)
    where = redact(storage_url)
    if study_name is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise ValueError(
                f"no sigmatune study in {where!r}; run `sigmatune run` or "
                "`sigmatune tune-sampling` first"
            )
        raise ValueError(
            f"{where!r} holds several sigmatune studies ({', '.join(names)}); name one "
            "(--study-name NAME)"
        )
    if study_name not in names:
        raise ValueError(
            f"no sigmatune study named {study_name!r} in {where!r}; "
            f"found: {', '.join(names) or 'none'}"
        )
    return study_name


def _check_layout(name: str, attrs: Mapping[str, Any]) -> None:
    if attrs.get(ROLE) != "outer":
        raise StudyLayoutError(
            f"study {name!r} is not a sigmatune outer study "
            f"(its {ROLE!r} is {attrs.get(ROLE)!r}, expected 'outer')"
        )
    schema = attrs.get(SCHEMA_KEY)
    if schema != SCHEMA:
        raise StudyLayoutError(
            f"study {name!r} was written with {SCHEMA_KEY}={schema!r}; this version of "
            f"sigmatune reads schema {SCHEMA} only (rerun the study with this version)"
        )


def read_trial(ft: FrozenTrial) -> TrialRecord:
    ua, sa = ft.user_attrs, ft.system_attrs
    inner = {int(k): InnerRecord.from_dict(v) for k, v in (sa.get(INNER) or {}).items()}
    retry_of = sa.get("failed_trial")
    return TrialRecord(
        number=ft.number,
        trial_id=adapter.trial_id(ft),
        state=ft.state.name,
        values=None if ft.values is None else tuple(float(v) for v in ft.values),
        objective=sa.get(OBJECTIVE),
        name=ua.get(NAME),
        original_trial=int(ua.get(ORIGINAL_TRIAL, ft.number)),
        retry_of=None if retry_of is None else int(retry_of),
        fail_reason=ua.get(FAIL_REASON),
        prune_reason=ua.get(PRUNE_REASON),
        note=ua.get(NOTE),
        model_artifact=ua.get(MODEL_ARTIFACT),
        train=dict(ua.get(TRAIN) or {}),
        inner=inner,
        params=dict(ft.params),
        running_since=(
            ft.datetime_start.isoformat(timespec="seconds")
            if ft.state == TrialState.RUNNING and ft.datetime_start is not None
            else None
        ),
        gaps={int(k): dict(v) for k, v in (sa.get(GAPS) or {}).items()},
        interim={int(k): float(v) for k, v in ft.intermediate_values.items()},
        interim_spread=interim_spreads(ft),
        prune_cut=prune_cuts(ft),
        density=None if sa.get(DENSITY) is None else dict(sa[DENSITY]),
        lam_errors=None if sa.get(LAM_ERRORS) is None else dict(sa[LAM_ERRORS]),
    )


def read_study(storage: optuna.storages.BaseStorage, study_name: str) -> StudyRecord:
    """Read an outer study and its trials' records. Raises ``ValueError`` when it is not a
    sigmatune outer study of this schema."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        raise ValueError(
            f"no study named {study_name!r} in this storage; sigmatune studies there: "
            f"{', '.join(outer_study_names(storage)) or 'none'}"
        ) from None
    attrs = storage.get_study_user_attrs(study_id)
    _check_layout(study_name, attrs)
    config = Config.from_dict(attrs[CONFIG], source=f"stored in study {study_name!r}")
    trials = [read_trial(ft) for ft in storage.get_all_trials(study_id, deepcopy=False)]
    study_ids = {study_name: study_id}
    for t in trials:
        for r in t.inner.values():
            if r.study_name not in study_ids:
                try:
                    study_ids[r.study_name] = storage.get_study_id_from_name(r.study_name)
                except KeyError:
                    pass
    directions = tuple(d.name.lower() for d in storage.get_study_directions(study_id))
    return StudyRecord(
        name=study_name,
        study_id=study_id,
        uid=str(attrs.get(UID, "")),
        kind=str(attrs.get(KIND, "bilevel")),
        config=config,
        floors=attrs.get(FLOORS),
        seeds=SeedPlan.from_dict(attrs[SEEDS]),
        source=attrs.get(SOURCE),
        trials=trials,
        study_ids=study_ids,
        export=attrs.get(EXPORT),
        directions=directions,
        model_info=attrs.get(MODEL_INFO),
        confirmations=read_confirmations(storage, study_id),
    )


@dataclass(frozen=True)
class InnerTrialRecord:
    """One inner trial: its schedule, the FID on the search seeds, and its starting name."""

    number: int
    state: str
    fid: float | None
    schedule: Schedule | None
    start: str | None
    params: dict[str, Any]
    trial_id: int = -1  # the storage's id of the trial


def read_inner_trials(
    storage: optuna.storages.BaseStorage, study_name: str
) -> list[InnerTrialRecord]:
    study_id = storage.get_study_id_from_name(study_name)
    out = []
    for ft in storage.get_all_trials(study_id, deepcopy=False):
        ua = ft.user_attrs
        sched = None
        if ua.get(SIGMAS):
            sched = Schedule(
                str(ua.get(SAMPLER, "")),
                tuple(float(s) for s in ua[SIGMAS]),
                dict(ua.get(SAMPLER_KWARGS) or {}),
            )
        out.append(
            InnerTrialRecord(
                number=ft.number,
                state=ft.state.name,
                fid=None if ua.get(FID) is None else float(ua[FID]),
                schedule=sched,
                start=ua.get(START),
                params=dict(ft.params),
                trial_id=adapter.trial_id(ft),
            )
        )
    return out


def read_inner_schedule(ft: FrozenTrial) -> Schedule:
    ua = ft.user_attrs
    return Schedule(
        str(ua[SAMPLER]),
        tuple(float(s) for s in ua[SIGMAS]),
        dict(ua.get(SAMPLER_KWARGS) or {}),
    )


# ============================================================================================
# Small readers and attribute sets for the engine (so no other module names a stored key)


def start_attrs(name: str) -> dict[str, Any]:
    """The user attrs of an inner trial enqueued as the starting point or baseline ``name``."""
    return {START: name}


def start_of(trial: FrozenTrial) -> str | None:
    """The starting point an inner trial was enqueued as (None: a trial the search proposed)."""
    value = trial.user_attrs.get(START)
    return None if value is None else str(value)


def inner_fid(trial: FrozenTrial) -> float | None:
    """An inner trial's FID on the search seeds (None until it is written)."""
    value = trial.user_attrs.get(FID)
    return None if value is None else float(value)


def name_attrs(name: str) -> dict[str, Any]:
    """The user attrs of an outer trial enqueued as the named configuration ``name``."""
    return {NAME: name}


def name_of(trial: FrozenTrial | optuna.trial.Trial) -> str | None:
    """The named configuration an outer trial was enqueued as (None: proposed)."""
    value = trial.user_attrs.get(NAME)
    return None if value is None else str(value)


def objective_of(trial: FrozenTrial) -> dict[str, Any] | None:
    """The objective description an outer trial trained (None before it began)."""
    value = trial.system_attrs.get(OBJECTIVE)
    return None if value is None else dict(value)


def fail_reason(trial: FrozenTrial) -> str | None:
    """Why a trial failed, as written by :func:`write_failure` (None: no reason)."""
    value = trial.user_attrs.get(FAIL_REASON)
    return None if not value else str(value)


def retry_user_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The user attrs a retry of a failed trial starts with: the trial's, without its reason."""
    return {k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON}


def is_initialised(study: optuna.Study) -> bool:
    """Whether the process that created an outer study has written its records."""
    return UID in study.user_attrs
