"""What the quality benchmarks share: one typed row per inner study (read from the
``InnerRecord`` that ``study.inner.tune_steps`` returns) and the tables printed from it.

Every FID is a held-out mean ± spread over the SeedPlan's held-out seed sets, beside the
scorer's floor (real vs real) and noise vs real (a reference point, not an upper bound). A
gain is split as the study splits it: "step placement" = tuned / karras rho=7 on the tuned
schedule's own sigma range, "sigma range" = karras rho=7 on that range / karras rho=7 on the
run's full range. No ratio is printed between two scores at the floor (``HeldOut.ratio``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks._common import fmt, fmt_spread, format_table
from sigmatune.objectives.fid import Floors
from sigmatune.study.context import RunContext
from sigmatune.study.records import InnerRecord, Schedule
from sigmatune.study.scoring import score_schedule

SCHEDULES = ("tuned", "karras_rho7_same_range", "loglinear_same_range", "karras_rho7")
LABELS = {
    "tuned": "tuned",
    "karras_rho7_same_range": "karras ρ=7, same range",
    "loglinear_same_range": "loglinear, same range",
    "karras_rho7": "karras ρ=7, full range",
    "reference": "reference",
}


@dataclass(frozen=True)
class Figure:
    """A held-out figure: the mean and sample standard deviation over the seed sets."""

    mean: float
    spread: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Figure:
        import statistics

        v = tuple(float(x) for x in values)
        return cls(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, v)

    def text(self) -> str:
        return fmt_spread(self.mean, self.spread)


@dataclass(frozen=True)
class QualityRow:
    """One inner study: the tuned schedule against the fair baselines, on held-out seeds."""

    dataset: str
    sampler: str
    nfe: int
    tuned_sigmas: tuple[float, ...]
    search_fid: float  # the search's minimum on its own seeds (optimistic)
    at_bound: tuple[str, ...]  # params of the best trial on a bound of the space
    fid: dict[str, Figure]  # held-out FID per schedule: SCHEDULES, peers, "reference"
    floor: float
    floor_spread: float
    ceiling: float
    placement_ratio: float | None  # tuned / karras same range; None at the floor
    range_ratio: float | None  # karras same range / karras full range; None at the floor
    sliced_wasserstein: dict[str, Figure] = field(default_factory=dict)  # independent check
    tuned_from: str = "search"  # the starting point the best trial was (a baseline, a peer)

    def at_floor(self, name: str) -> bool:
        return self.fid[name].mean <= self.floor + 2 * self.floor_spread

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Where the tuned schedule came from: a trial the search proposed, or a starting point.
ORIGIN = {
    "search": "a search trial",
    "karras_rho7": "karras ρ=7 (start)",
    "loglinear": "loglinear (start)",
    "gits": "GITS (start)",
    "ld3": "LD3 (start)",
    "karras_rho7_same_range": "karras ρ=7 on its range (polish)",
    "loglinear_same_range": "loglinear on its range (polish)",
}


def held_out_scores(ctx: RunContext, D: Any, schedule: Schedule) -> list[float]:
    """FID of one schedule on every held-out seed set of the context's SeedPlan."""
    return [
        score_schedule(ctx, D, schedule, ctx.seeds.held_out(k))
        for k in range(ctx.seeds.held_out_sets)
    ]


def row_from_record(
    dataset: str,
    record: InnerRecord,
    floors: Floors,
    *,
    extra_fid: Mapping[str, Sequence[float]] | None = None,
    sliced_wasserstein: Mapping[str, Sequence[float]] | None = None,
) -> QualityRow:
    """The row of one inner study's record (its held-out figures) and the scorer's floors."""
    held = record.held_out
    if held is None:
        raise ValueError(f"inner study {record.study_name!r} has no held-out figures")
    fid = {name: Figure.of(values) for name, values in held.scores.items()}  # peers too
    fid.update({name: Figure.of(v) for name, v in (extra_fid or {}).items()})
    return QualityRow(
        dataset=dataset,
        sampler=record.tuned.sampler,
        nfe=record.nfe,
        tuned_sigmas=tuple(record.tuned.sigmas),
        search_fid=record.search_fid,
        at_bound=tuple(record.at_bound),
        fid=fid,
        floor=held.floor,
        floor_spread=held.floor_spread,
        ceiling=floors.ceiling,
        placement_ratio=held.ratio("tuned", "karras_rho7_same_range"),
        range_ratio=held.ratio("karras_rho7_same_range", "karras_rho7"),
        sliced_wasserstein={k: Figure.of(v) for k, v in (sliced_wasserstein or {}).items()},
        tuned_from=next(
            (k for k, v in record.search_baselines.items() if v == record.search_fid), "search"
        ),
    )


def shown_bounds(at_bound: Sequence[str]) -> list[str]:
    """The bounds worth a reader's eye: the sigma range's, and gaps at their smallest ratio (a
    gap at ratio 1 is merely the largest one: every schedule has one)."""
    return [b for b in at_bound if b.startswith("sigma_") or b.endswith("=low")]


def ratio_text(ratio: float | None) -> str:
    """A gain as printed: three digits, or "at floor" where both scores are at the floor."""
    return "at floor" if ratio is None else f"{ratio:.3f}"


def figure_text(d: Mapping[str, Any]) -> str:
    """A Figure as a JSON dict, printed."""
    return fmt_spread(d["mean"], d["spread"])


def fid_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Held-out FID of each schedule (the published methods the study scored too: GITS, LD3),
    the two gains and the tuned sigma range, per NFE (from the JSON's rows, so the README
    block can be re-rendered from the file)."""
    peers = sorted({n for r in rows for n in r["fid"]} - {*SCHEDULES, "reference"})
    headers = [
        "NFE",
        *(LABELS[name] for name in SCHEDULES),
        *(name.upper() for name in peers),
        "step placement (tuned / karras same range)",
        "σ range (karras same / full range)",
        "tuned σ range",
    ]
    origin = any("tuned_from" in r for r in rows)  # files written before it lack the column
    if origin:
        headers.append("tuned is")
    body = []
    for r in rows:
        sigmas = r["tuned_sigmas"]
        bounds = shown_bounds(r["at_bound"])
        bound = f" (on a bound: {', '.join(bounds)})" if bounds else ""
        body.append(
            [
                r["nfe"],
                *(figure_text(r["fid"][name]) for name in SCHEDULES),
                *(figure_text(r["fid"][name]) if name in r["fid"] else "-" for name in peers),
                ratio_text(r["placement_ratio"]),
                ratio_text(r["range_ratio"]),
                f"[{fmt(sigmas[-2], 3)}, {fmt(sigmas[0], 3)}]{bound}",
                *([ORIGIN.get(r.get("tuned_from"), r.get("tuned_from"))] if origin else []),
            ]
        )
    return format_table(headers, body)


def sw_table(rows: Sequence[Mapping[str, Any]], reference_steps: int) -> str:
    """The independent check: sliced Wasserstein to true samples, per NFE."""
    names = [*SCHEDULES, "reference", "true_vs_true"]
    labels = {
        **LABELS,
        "reference": f"{reference_steps}-step karras ρ=7",
        "true_vs_true": "true vs true",
    }
    body = [[r["nfe"], *(figure_text(r["sliced_wasserstein"][n]) for n in names)] for r in rows]
    return format_table(["NFE", *(labels[n] for n in names)], body)


def floor_text(row: Mapping[str, Any]) -> str:
    return (
        f"floor (real vs real) {fmt_spread(row['floor'], row['floor_spread'])}, "
        f"ceiling (noise vs real) {fmt(row['ceiling'], 4)}"
    )
