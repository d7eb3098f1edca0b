"""``sigmatune status``: a table of outer trials and their inner bests, read from storage."""

from __future__ import annotations

from typing import Any

import optuna

from sigmatune.study.bilevel import ROLE, describe_objective
from sigmatune.study.storage import check_storage_exists, make_storage
from sigmatune.study.trials import FAIL_REASON, PRUNE_REASON


def outer_study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [
        s.study_name
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if s.user_attrs.get(ROLE) == "outer"
    ]


def status_rows(
    storage_url: str, study_name: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """The rows of the status table: one per outer trial."""
    check_storage_exists(storage_url)
    storage = make_storage(storage_url, heartbeat_interval=None)
    names = outer_study_names(storage)
    if study_name is None:
        if not names:
            raise ValueError(f"no sigmatune study in {storage_url!r}")
        if len(names) > 1:
            raise ValueError(
                f"{storage_url!r} holds several studies ({', '.join(names)}); "
                "choose one with --study-name"
            )
        study_name = names[0]
    elif study_name not in names:
        raise ValueError(
            f"no sigmatune study named {study_name!r} in {storage_url!r}; "
            f"found: {', '.join(names) or 'none'}"
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "objective": describe_objective(t.user_attrs.get("sigmatune:objective")),
                "value": t.value,
                "best_fid": t.user_attrs.get("inner:best_fid", {}),
                "baseline_fid": t.user_attrs.get("inner:baseline_fid", {}),
                "baseline": t.user_attrs.get("baseline"),
                "retry_of": t.system_attrs.get("failed_trial"),
                "reason": t.user_attrs.get(FAIL_REASON) or t.user_attrs.get(PRUNE_REASON, ""),
            }
        )
    return study_name, rows


def format_status(study_name: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"study {study_name}: {len(rows)} outer trial(s)"]
    header = (
        f"{'trial':>5}  {'state':<8}  {'training weighting':<44}  "
        "inner best FID per NFE (vs karras_rho7)"
    )
    lines.append(header)
    for r in rows:
        tag = " [baseline]" if r["baseline"] else ""
        if r["retry_of"] is not None:
            tag += f" [retry of {r['retry_of']}]"
        cells = []
        for nfe, fid in r["best_fid"].items():
            karras = r["baseline_fid"].get(nfe, {}).get("karras_rho7")
            cells.append(f"{nfe}: {fid:.4g}" + (f" ({karras:.4g})" if karras else ""))
        detail = "  ".join(cells) if cells else r["reason"]
        lines.append(f"{r['trial']:>5}  {r['state']:<8}  {r['objective'] + tag:<44}  {detail}")
    return "\n".join(lines)
