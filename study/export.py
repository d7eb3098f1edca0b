"""Export a study's best training weighting and tuned step schedules.

``sigmatune export STUDY --format json|csv|k-diffusion|diffusers``. Every format carries each
sigma list under a key ``sigmas`` (a column, for CSV), descending and ending in 0
(k-diffusion's convention, ``models.schedules.validate``):

- ``json``: the whole record (:func:`export_document`; schema ``study/export.schema.json``):
  study, trial, data set, FID and the baselines' FID on the same model, seeds and images; the
  training weighting with a table over lam of ``p_lam``, ``w`` and ``W``; per NFE budget the
  sampler, its churn settings and the sigmas.
- ``csv``: one row per step: ``nfe, sampler, step, sigmas, lam``.
- ``k-diffusion``: a tensor file (``torch.load(path, weights_only=True)["sigmas"]``) and a
  two-line snippet for ``K.sampling.sample_heun(model, x, sigmas)``.
- ``diffusers``: the list for ``EulerDiscreteScheduler.set_timesteps(sigmas=...)``.

When a run ends, :func:`attach_export` attaches the best trial's JSON and CSV to that trial
for optuna-dashboard.
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from sigmatune.dashboards.figures import (
    BASELINES,
    LAM_POINTS,
    SCHEMA,
    StudyData,
    lam_grid,
    load_study_data,
    objective_label,
    weighting_curves,
)
from sigmatune.models.schedules import validate

__all__ = [
    "EXPORT_ATTR",
    "FORMATS",
    "SCHEMA_PATH",
    "ExportResult",
    "attach_export",
    "diffusers_document",
    "export",
    "export_document",
    "export_report",
    "kdiffusion_payload",
    "kdiffusion_snippet",
    "load_schema",
    "open_storage",
    "resolve_study_name",
    "to_csv",
]

FORMATS = ("json", "csv", "k-diffusion", "diffusers")
EXPORT_FORMAT = "sigmatune-export"
EXPORT_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("export.schema.json")
EXPORT_ATTR = "sigmatune:export"  # outer study user attr: the attached export's artifact ids
# models.samplers keyword -> k-diffusion keyword (k_diffusion.sampling.sample_euler/heun)
KDIFFUSION_KWARGS = {
    "S_churn": "s_churn",
    "S_min": "s_tmin",
    "S_max": "s_tmax",
    "S_noise": "s_noise",
}
KDIFFUSION_SAMPLERS = {
    "euler": "sample_euler",
    "heun": "sample_heun",
    "dpmpp_2m": "sample_dpmpp_2m",
}
DIFFUSERS_NOTES = (
    "EulerDiscreteScheduler.set_timesteps(sigmas=sigmas) takes this list as it is: sigmas in "
    "the variance-exploding convention (x = x0 + sigma*eps), descending, the final 0 included "
    "(final_sigmas_type is then not used); scheduler.sigmas equals the list in float32.",
    "Its timesteps are the model's training timesteps interpolated in log sigma from its "
    "alphas_cumprod (clamped to the model's sigma range), or 0.25*ln(sigma) with "
    "timestep_type='continuous' and prediction_type='v_prediction' (EDM's c_noise).",
    "Of the other diffusers schedulers with a sigmas argument, FlowMatchEulerDiscreteScheduler "
    "takes flow times t = sigma/(1+sigma) without the final 0 (see flow_match_sigmas; with "
    "shift=1 and no dynamic shifting), UniPCMultistepScheduler only with use_flow_sigmas=True, "
    "and EDMEulerScheduler reads its sigmas as a ramp for its own sigma_schedule: they do not "
    "take this list as it is.",
    "EulerDiscreteScheduler is a first-order (Euler) sampler; the schedule was tuned for the "
    "sampler named in 'sampler' and NFE counts model evaluations of that sampler.",
)


# --------------------------------------------------------------------------------------------
# Opening a study


def open_storage(storage_url: str) -> optuna.storages.BaseStorage:
    """Open an existing storage for reading; a missing SQLite/journal file is a
    ``StorageError`` and nothing is created."""
    from sigmatune.study.storage import check_storage_exists, make_storage

    check_storage_exists(storage_url)
    return make_storage(storage_url, heartbeat_interval=None)


def resolve_study_name(
    storage: optuna.storages.BaseStorage, storage_url: str, study_name: str | None
) -> str:
    """``study_name``, checked to be a sigmatune outer study, or the only one in the storage."""
    names = [
        s.study_name
        for s in storage.get_all_studies()
        if s.user_attrs.get("sigmatune:role") == "outer"
    ]
    if study_name is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise ValueError(f"no sigmatune study in {storage_url!r}")
        raise ValueError(
            f"{storage_url!r} holds several sigmatune studies ({', '.join(names)}); name one"
        )
    if study_name not in names:
        raise ValueError(
            f"no sigmatune study named {study_name!r} in {storage_url!r}; "
            f"found: {', '.join(names) or 'none'}"
        )
    return study_name


# --------------------------------------------------------------------------------------------
# The JSON document


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that :func:`export_document` output satisfies."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats (e.g. ``S_max = inf``) become the strings "inf",
    "-inf", "nan"; tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _float_value(value: Any) -> float:
    return float(value)  # also "inf", "-inf", "nan" as written by _json_safe


def _redact(url: Any) -> Any:
    """A storage URL without its password."""
    if not isinstance(url, str) or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"


def _choose_trial(data: StudyData, trial: int | None):
    if trial is None:
        best = data.best
        if best is None:
            raise ValueError(
                f"study {data.name!r} has no COMPLETE outer trial yet; nothing to export "
                "(see `sigmatune status`)"
            )
        return best
    chosen = data.trial(trial)
    if chosen.state != "COMPLETE":
        done = ", ".join(str(t.number) for t in data.complete) or "none"
        raise ValueError(
            f"trial {trial} of study {data.name!r} is {chosen.state}, not COMPLETE; "
            f"complete trials: {done}"
        )
    return chosen


def export_document(
    data: StudyData,
    trial: int | None = None,
    nfe: int | None = None,
    *,
    points: int = LAM_POINTS,
) -> dict[str, Any]:
    """The JSON export of an outer trial (default: the best complete one), for all its NFE
    budgets or only ``nfe``. Strict JSON (non-finite floats as strings), valid against
    :func:`load_schema`."""
    chosen = _choose_trial(data, trial)
    if chosen.objective is None:
        raise ValueError(f"trial {chosen.number} of study {data.name!r} has no training weighting")
    budgets = [k for k in data.nfe_budgets if k in chosen.schedules] or sorted(chosen.schedules)
    if nfe is not None:
        if nfe not in chosen.schedules:
            raise ValueError(
                f"trial {chosen.number} of study {data.name!r} has no inner study at nfe={nfe}; "
                f"valid: {', '.join(str(k) for k in budgets) or 'none'}"
            )
        budgets = [nfe]

    desc = chosen.objective
    lam = lam_grid(float(desc["sigma_min"]), float(desc["sigma_max"]), points)
    curves = weighting_curves(desc, lam)
    table = {
        key: [float(v) for v in curves[key].tolist()]
        for key in ("lam", "sigma", "p_lam", "w", "W", "W_normalised")
    }

    config = dict(data.config)
    if "storage" in config:
        config["storage"] = _redact(config["storage"])
    inner_cfg = config.get("inner") or {}
    seed = config.get("seed")
    num_images = inner_cfg.get("fid_num_images")
    seeds = None
    if seed is not None and num_images is not None:
        # study.trials.generation_seeds: one seed per image, the same for every inner trial
        seeds = {"start": 1_000_000 * int(seed), "stop": 1_000_000 * int(seed) + int(num_images)}

    schedules: dict[str, Any] = {}
    for k in budgets:
        by_name = chosen.schedules[k]
        tuned = by_name.get("tuned")
        if tuned is None:
            continue
        sigmas = validate(tuned.sigmas)
        schedules[str(k)] = {
            "nfe": k,
            "sampler": tuned.sampler,
            "sampler_kwargs": dict(tuned.sampler_kwargs),
            "num_steps": len(tuned.sigmas) - 1,
            "sigmas": [float(s) for s in sigmas.tolist()],
            "lam": [float(v) for v in (-2 * torch.log(sigmas[:-1])).tolist()],
            "fid": tuned.fid,
            "inner_study": tuned.study_name,
            "inner_trial": tuned.trial_number,
            "params": dict(tuned.params),
            "baselines": {
                name: {
                    "fid": by_name[name].fid,
                    "sampler": by_name[name].sampler,
                    "sampler_kwargs": dict(by_name[name].sampler_kwargs),
                    "sigmas": [float(s) for s in by_name[name].sigmas],
                    "inner_trial": by_name[name].trial_number,
                }
                for name in BASELINES
                if name in by_name
            },
        }
    if not schedules:
        raise ValueError(
            f"trial {chosen.number} of study {data.name!r} has no inner study with a complete "
            "trial; nothing to export"
        )
    primary = data.primary_nfe
    doc = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "sigmatune:schema": SCHEMA,
        "study": data.name,
        "trial": chosen.number,
        "original_trial": chosen.original_trial,
        "is_best": data.best is not None and data.best.number == chosen.number,
        "baseline": chosen.baseline,
        "dataset": config.get("dataset"),
        "primary_nfe": primary,
        "fid": chosen.value,
        "baseline_fid": {str(k): v for k, v in chosen.baseline_fid.items()},
        "fid_settings": {
            "extractor": inner_cfg.get("fid_extractor"),
            "num_images": num_images,
            "seeds": seeds,
        },
        "model_artifact": chosen.model_artifact,
        "training": {
            "label": objective_label(desc),
            "parameterisation": desc["parameterisation"],
            "sigma_data": float(desc["sigma_data"]),
            "sigma_min": float(desc["sigma_min"]),
            "sigma_max": float(desc["sigma_max"]),
            "density": desc["density"],
            "weighting": desc["weighting"],
            "adaptive": desc.get("adaptive"),
            "description": desc,
            "table": table,
            "table_note": (
                "over lam = -2 ln sigma: p_lam = noise-level density per unit lam; w = loss "
                "weight in the parameterisation's space; W = p_lam*w*sigma^2/c_out^2, the "
                "effective eps-space weight per unit lam (Kingma & Gao 2023); W_normalised = W "
                "over its area. An adaptive mechanism enters W in its initial state."
            ),
        },
        "schedules": schedules,
        "config": config,
    }
    return _json_safe(doc)


def dumps(doc: dict[str, Any]) -> str:
    """Strict JSON text of an export (``allow_nan=False``)."""
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def _one_schedule(doc: dict[str, Any], nfe: int | None) -> dict[str, Any]:
    schedules = doc["schedules"]
    if nfe is None:
        primary = doc.get("primary_nfe")
        key = str(primary) if str(primary) in schedules else next(iter(schedules))
    else:
        key = str(nfe)
        if key not in schedules:
            raise ValueError(
                f"the export has no schedule at nfe={nfe}; valid: {', '.join(schedules)}"
            )
    return schedules[key]


# --------------------------------------------------------------------------------------------
# Other formats


def to_csv(doc: dict[str, Any]) -> str:
    """The sigma lists, one row per step: ``nfe, sampler, step, sigmas, lam`` (lam empty for
    the final 0)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["nfe", "sampler", "step", "sigmas", "lam"])
    for sched in doc["schedules"].values():
        for i, s in enumerate(sched["sigmas"]):
            lam = repr(-2 * math.log(s)) if s > 0 else ""
            writer.writerow([sched["nfe"], sched["sampler"], i, repr(float(s)), lam])
    return buf.getvalue()


def kdiffusion_kwargs(sampler_kwargs: dict[str, Any]) -> dict[str, float]:
    """``models.samplers`` churn keywords under k-diffusion's names (``s_churn`` ...)."""
    return {
        KDIFFUSION_KWARGS[k]: _float_value(v)
        for k, v in sampler_kwargs.items()
        if k in KDIFFUSION_KWARGS
    }


def kdiffusion_snippet(doc: dict[str, Any], nfe: int | None, path: str | Path) -> str:
    """Two lines: load the sigmas, run the k-diffusion sampler of the schedule (``model`` a
    k-diffusion denoiser ``model(x, sigma)``, ``noise`` a standard normal tensor)."""
    sched = _one_schedule(doc, nfe)
    fn = KDIFFUSION_SAMPLERS.get(sched["sampler"], f"sample_{sched['sampler']}")
    extra = "".join(
        f", {k}={'float(' + repr(str(v)) + ')' if not math.isfinite(v) else repr(v)}"
        for k, v in kdiffusion_kwargs(sched["sampler_kwargs"]).items()
    )
    return (
        f'sigmas = torch.load({str(path)!r}, weights_only=True)["sigmas"].to(noise.device)\n'
        f"x0 = K.sampling.{fn}(model, noise * sigmas[0], sigmas{extra})\n"
    )


def kdiffusion_payload(doc: dict[str, Any], nfe: int | None, path: str | Path) -> dict[str, Any]:
    """What the k-diffusion tensor file holds (loadable with ``weights_only=True``)."""
    sched = _one_schedule(doc, nfe)
    return {
        "sigmas": torch.tensor(sched["sigmas"], dtype=torch.float64),
        "nfe": int(sched["nfe"]),
        "sampler": sched["sampler"],
        "k_diffusion_sampler": KDIFFUSION_SAMPLERS.get(sched["sampler"], ""),
        "sampler_kwargs": kdiffusion_kwargs(sched["sampler_kwargs"]),
        "fid": sched["fid"],
        "study": doc["study"],
        "trial": int(doc["trial"]),
        "snippet": kdiffusion_snippet(doc, nfe, path),
    }


def diffusers_document(doc: dict[str, Any], nfe: int | None = None) -> dict[str, Any]:
    """The sigmas for ``EulerDiscreteScheduler.set_timesteps(sigmas=...)`` with notes on
    which diffusers schedulers accept them."""
    sched = _one_schedule(doc, nfe)
    sigmas = sched["sigmas"]
    return {
        "sigmas": list(sigmas),
        "scheduler": "EulerDiscreteScheduler",
        "usage": "scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config); "
        "scheduler.set_timesteps(sigmas=sigmas)",
        "flow_match_sigmas": [s / (1 + s) for s in sigmas[:-1]],
        "nfe": sched["nfe"],
        "sampler": sched["sampler"],
        "sampler_kwargs": sched["sampler_kwargs"],
        "fid": sched["fid"],
        "study": doc["study"],
        "trial": doc["trial"],
        "notes": list(DIFFUSERS_NOTES),
    }


# --------------------------------------------------------------------------------------------
# The command


@dataclass
class ExportResult:
    """What :func:`export` wrote: ``paths`` (empty when ``text`` went to stdout), the text of
    a text format, and a message for the user (the k-diffusion snippet)."""

    document: dict[str, Any]
    format: str
    paths: list[Path] = field(default_factory=list)
    text: str = ""
    message: str = ""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def render(
    doc: dict[str, Any], fmt: str, *, nfe: int | None = None, output: str | Path | None = None
) -> ExportResult:
    """Write ``doc`` in ``fmt`` to ``output`` (text formats: returned as ``text`` when
    ``output`` is None; k-diffusion: default ``STUDY-trial-NNNN-nfe-K.pt``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    result = ExportResult(document=doc, format=fmt)
    if fmt == "k-diffusion":
        sched = _one_schedule(doc, nfe)
        path = (
            Path(output)
            if output
            else Path(f"{_safe(doc['study'])}-trial-{int(doc['trial']):04d}-nfe-{sched['nfe']}.pt")
        )
        payload = kdiffusion_payload(doc, sched["nfe"], path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, path)
        result.paths.append(path)
        result.message = (
            f"# sigmas of study {doc['study']!r}, trial {doc['trial']}, NFE {sched['nfe']} "
            f"({sched['sampler']}, FID {sched['fid']:.6g}); k-diffusion:\n{payload['snippet']}"
        )
        return result
    if fmt == "json":
        text = dumps(doc)
    elif fmt == "csv":
        text = to_csv(doc)
    else:
        text = dumps(diffusers_document(doc, nfe))
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        result.paths.append(path)
    else:
        result.text = text
    return result


def export(
    storage_url: str,
    study_name: str | None = None,
    *,
    trial: int | None = None,
    nfe: int | None = None,
    fmt: str = "json",
    output: str | Path | None = None,
) -> ExportResult:
    """``sigmatune export``: the best (or ``trial``'s) weighting and schedules in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    storage = open_storage(storage_url)
    name = resolve_study_name(storage, storage_url, study_name)
    data = load_study_data(storage, name)
    doc = export_document(data, trial, nfe)
    return render(doc, fmt, nfe=nfe, output=output)


def export_report(storage_url: str, study_name: str | None, output: str | Path) -> Path:
    """``sigmatune report``: the self-contained HTML report with the best trial's export."""
    from sigmatune.dashboards.report import write_report

    storage = open_storage(storage_url)
    name = resolve_study_name(storage, storage_url, study_name)
    data = load_study_data(storage, name)
    doc = export_document(data) if data.best is not None else None
    return write_report(data, output, export=doc)


# --------------------------------------------------------------------------------------------
# Attaching the best trial's export


def attach_export(
    storage: optuna.storages.BaseStorage,
    artifact_store: Any,
    study_name: str,
    directory: str | Path,
    *,
    trial: int | None = None,
) -> dict[str, Any] | None:
    """Attach the export (JSON and CSV) of the best outer trial (or ``trial``) to that trial as
    artifacts; a previous attachment of the study is replaced. Returns the record stored in
    the outer study's user attr ``"sigmatune:export"`` (None when no trial is complete).

    A finished trial's own attributes cannot change, so the artifacts are registered the way
    optuna-dashboard registers uploads to a trial (study system attr
    ``dashboard:artifacts:<trial_id>:<artifact_id>``): they show on the trial's page there,
    and ``optuna.artifacts.download_artifact(artifact_store=..., artifact_id=...)`` reads them.
    """
    from optuna_dashboard.artifact._backend import DASHBOARD_ARTIFACTS_ATTR_PREFIX

    data = load_study_data(storage, study_name)
    if trial is None and data.best is None:
        return None
    doc = export_document(data, trial)
    chosen = data.trial(int(doc["trial"]))
    study_id = data.study_id

    previous = storage.get_study_user_attrs(study_id).get(EXPORT_ATTR)
    if previous:
        for artifact_id in (previous.get("artifacts") or {}).values():
            key = f"{DASHBOARD_ARTIFACTS_ATTR_PREFIX}{previous.get('trial_id')}:{artifact_id}"
            storage.set_study_system_attr(study_id, key, json.dumps(None))
            try:
                artifact_store.remove(artifact_id)
            except Exception:  # already gone
                pass

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{_safe(study_name)}-trial-{chosen.number:04d}-export"
    files = {
        "json": (directory / f"{stem}.json", dumps(doc), "application/json"),
        "csv": (directory / f"{stem}.csv", to_csv(doc), "text/csv"),
    }
    artifacts: dict[str, str] = {}
    for fmt, (path, text, mimetype) in files.items():
        path.write_text(text, encoding="utf-8")
        artifact_id = str(uuid.uuid4())
        with open(path, "rb") as f:
            artifact_store.write(artifact_id, f)
        meta = {
            "artifact_id": artifact_id,
            "filename": path.name,
            "mimetype": mimetype,
            "encoding": None,
        }
        storage.set_study_system_attr(
            study_id,
            f"{DASHBOARD_ARTIFACTS_ATTR_PREFIX}{chosen.trial_id}:{artifact_id}",
            json.dumps(meta),
        )
        artifacts[fmt] = artifact_id
    record = {
        "trial": chosen.number,
        "trial_id": chosen.trial_id,
        "artifacts": artifacts,
        "files": {fmt: v[0].name for fmt, v in files.items()},
    }
    storage.set_study_user_attr(study_id, EXPORT_ATTR, record)
    return record
