"""The export formats: what ``export``, ``report``, ``schedule`` and a finished ``run`` write.

Every format carries each sigma list under a key ``sigmas`` (a column, for CSV), descending and
ending in 0 (k-diffusion's convention, ``models.schedules.validate``):

- ``json``: the whole record (:func:`export_document`; schema ``study/export.schema.json``):
  study, trial, data set; the training weighting with a table over lam of ``p_lam``, ``w``
  and ``W``; per NFE budget the sampler, its settings, the sigmas and the ``held_out``
  figures (the tuned schedule and the fair baselines on seeds the search never saw, beside
  the scorer's floor).
- ``csv``: one row per step: ``nfe, sampler, step, sigmas, lam``.
- ``k-diffusion``: one tensor file per NFE (``torch.load(path, weights_only=True)["sigmas"]``)
  and a two-line snippet for ``K.sampling.sample_heun(model, x, sigmas)``.
- ``diffusers``: the list for ``EulerDiscreteScheduler.set_timesteps(sigmas=...)``, final 0
  included (top level: the primary NFE or ``--nfe``), and under ``schedules`` every NFE; for a
  study of a diffusers model (``--denoiser diffusers:PATH``) each NFE also lists what each of
  the model's own schedulers accepts (``models.diffusers_schedules.diffusers_arguments``:
  timesteps for DPM-Solver multistep, Heun, DDPM, LCM, TCD with the sigma error; sigmas for
  flow-matching schedulers; the way round for DDIM and Euler ancestral).
- the ``schedule`` command's document (:func:`schedule_document`), one schedule without a
  study, written in all of the above by :func:`write_schedule_files`.

One output rule for all of them (:func:`check_output`): the folder must exist and a file is
replaced only when sigmatune wrote it. Every file is written atomically (a temporary file in
the same folder, then a rename), so a full disk never leaves a half-written file where the
previous one was.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sigmatune.models.diffusers_schedules import diffusers_arguments
from sigmatune.models.placement import Placement
from sigmatune.models.schedules import validate
from sigmatune.objectives.curves import LAM_POINTS, lam_grid, weighting_curves
from sigmatune.study import records
from sigmatune.study.errors import WriteError
from sigmatune.study.records import REPORT_MARK, InnerRecord, StudyRecord, TrialRecord
from sigmatune.study.schedules import costs, density_schedule
from sigmatune.study.storage import redact_url as redact
from sigmatune.study.storage import safe_name, short_hash

FORMATS = ("json", "csv", "k-diffusion", "diffusers")


EXPORT_FORMAT = "sigmatune-export"


EXPORT_VERSION = 2


SCHEMA_PATH = Path(__file__).with_name("export.schema.json")


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
    "(final_sigmas_type is then not used); scheduler.sigmas equals the list in float32. Do "
    "not drop the final 0: sampling would stop at the last positive sigma with noise left.",
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


# Bytes of a study name in a file name: the longest stem plus "-export.json", "-nfe-K.pt" or a
# temporary file's affixes stays far below the 255 bytes a file name may have.
NAME_BYTES = 120


TABLE_NOTE = (
    "over lam = -2 ln sigma: p_lam = noise-level density per unit lam; w = loss weight in the "
    "parameterisation's space; W = p_lam*w*sigma^2/c_out^2, the effective eps-space weight per "
    "unit lam (Kingma & Gao 2023); W_normalised = W over its area. An adaptive mechanism "
    "enters W in its initial state."
)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it onto
    ``path``: readers see the old file or the new one, never half of one."""
    path = Path(path)
    if _is_dir(path):
        raise ValueError(f"output {str(path)!r} is a folder; give a file name")
    tmp = None
    try:
        prefix = f".{shorten_bytes(path.name, NAME_BYTES)}."
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(
                f"cannot write {str(path)!r} ({exc.strerror or exc}); "
                + ("the previous file is unchanged" if _exists(path) else "nothing was written")
            ) from None
        raise
    return path


def _is_dir(path: str | Path) -> bool:
    """``Path.is_dir``, False where the name cannot even be looked up (too long)."""
    try:
        return Path(path).is_dir()
    except OSError:
        return False


def _exists(path: str | Path) -> bool:
    try:
        return Path(path).exists()
    except OSError:
        return False


SQLITE_MAGIC = b"SQLite format 3\x00"


CSV_HEADER = "nfe,sampler,step,sigmas,lam"


OURS_MAX_BYTES = 64 << 20  # a file of ours is far smaller; a larger one is not read to check


def _json_is_ours(raw: bytes) -> bool:
    """An export or schedule document, or a diffusers sigma list, that sigmatune wrote."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    if doc.get("format") in (EXPORT_FORMAT, DOCUMENT_FORMAT):
        return True
    return {"sigmas", "scheduler", "notes", "study", "trial"} <= set(doc)  # diffusers_document


def _torch_is_ours(path: Path) -> bool:
    """A k-diffusion tensor file of :func:`kdiffusion_payload` (read with
    ``weights_only=True``: nothing in the file runs)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(payload, dict) and {"sigmas", "k_diffusion_sampler", "snippet"} <= set(
        payload
    )


def written_by_sigmatune(path: str | Path) -> bool:
    """Whether the existing file ``path`` is one that sigmatune writes (an export in any
    format, a schedule file, a report) or empty, and so may be replaced by a new one. A
    database (SQLite's header), another program's JSON, CSV or tensor file is not."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return True
        if size > OURS_MAX_BYTES:
            return False
        with path.open("rb") as f:
            raw = f.read()
    except OSError:
        return False
    if raw.startswith(SQLITE_MAGIC):
        return False
    if raw.startswith(b"PK\x03\x04"):  # a zip: torch.save's format
        return _torch_is_ours(path)
    head = raw[:8192].decode("utf-8", errors="replace")
    if REPORT_MARK in head:
        return True
    if head.lstrip().startswith("{"):
        return _json_is_ours(raw)
    return head.splitlines()[0].strip() == CSV_HEADER if head else False


def check_output(path: str | Path, command: str, example: str) -> Path:
    """The one rule for a file a command writes (``export``, ``report``, ``schedule``): its
    folder exists (nothing is created), and it is a new file or one that sigmatune wrote
    before; a folder, the study's database or anyone else's file is refused with one
    paragraph, before anything is read or written."""
    path = Path(path)
    if _is_dir(path):
        raise ValueError(
            f"{command} output {str(path)!r} is a folder; give a file name (-o {example})"
        )
    parent = path.parent
    if not _is_dir(parent):
        raise ValueError(
            f"the folder {str(parent)!r} of {command} output {str(path)!r} does not exist; "
            f"create it first, or give a file in an existing folder (-o {example})"
        )
    if _exists(path) and not written_by_sigmatune(path):
        what = "a SQLite database" if _is_sqlite(path) else "not a file that sigmatune wrote"
        raise ValueError(
            f"{str(path)!r} exists and is {what}, so `{command}` will not replace it; "
            f"nothing was written. Choose another output file (-o {example})"
        )
    return path


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def torch_bytes(payload: Any) -> bytes:
    """``torch.save`` into memory: written to a file by Python, a full disk is an OSError
    (torch's own file writer raises a RuntimeError without the cause)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def shorten_bytes(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8, never inside a character (file
    systems limit a file name to 255 bytes, not characters)."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def file_stem(study: str, trial: int) -> str:
    """A file name stem for a study's trial: the safe name, shortened (to 60 characters and
    NAME_BYTES bytes), with a hash of the full name so that two names never share a file."""
    short = shorten_bytes(safe_name(study)[:60], NAME_BYTES)
    return f"{short}-{short_hash(study)[:8]}-trial-{int(trial):04d}"


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that :func:`export_document` output satisfies."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats (e.g. ``S_max = inf``) become the strings "inf",
    "-inf", "nan"; tuples become lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def choose_trial(study: StudyRecord, trial: int | None) -> TrialRecord:
    """The trial to export: ``trial``, or the best complete one."""
    if trial is None:
        if study.best is None:
            raise ValueError(
                f"study {study.name!r} has no COMPLETE trial yet; nothing to export "
                "(see `sigmatune status`)"
            )
        return study.best
    chosen = study.trial(trial)
    if chosen.state != "COMPLETE":
        done = ", ".join(str(t.number) for t in study.complete) or "none"
        raise ValueError(
            f"trial {trial} of study {study.name!r} is {chosen.state}, not COMPLETE; "
            f"complete trials: {done}"
        )
    return chosen


def _budgets(study: StudyRecord, chosen: TrialRecord, nfe: int | None) -> list[int]:
    budgets = [k for k in study.nfe_budgets if k in chosen.inner] or sorted(chosen.inner)
    if nfe is None:
        return budgets
    if nfe not in chosen.inner and chosen.density is None:
        raise ValueError(
            f"trial {chosen.number} of study {study.name!r} has no inner study at nfe={nfe}; "
            f"valid: {', '.join(str(k) for k in budgets) or 'none'} (and it has no step "
            "density to derive a schedule at another NFE from)"
        )
    return [nfe]


def training_section(desc: dict[str, Any], points: int = LAM_POINTS) -> dict[str, Any]:
    """The training weighting with ``p_lam``, ``w`` and ``W`` tabulated over lam."""
    lam = lam_grid(float(desc["sigma_min"]), float(desc["sigma_max"]), points)
    curves = weighting_curves(desc, lam)
    return {
        "label": records.objective_label(desc),
        "parameterisation": desc["parameterisation"],
        "sigma_data": float(desc["sigma_data"]),
        "sigma_min": float(desc["sigma_min"]),
        "sigma_max": float(desc["sigma_max"]),
        "density": desc["density"],
        "weighting": desc["weighting"],
        "adaptive": desc.get("adaptive"),
        "description": desc,
        "table": {
            key: [float(v) for v in curves[key].tolist()]
            for key in ("lam", "sigma", "p_lam", "w", "W", "W_normalised")
        },
        "table_note": TABLE_NOTE,
    }


def schedule_section(record: InnerRecord) -> dict[str, Any]:
    """One NFE budget: the tuned schedule, its held-out figures and the baselines'."""
    tuned = record.tuned
    sigmas = validate(tuned.sigmas)
    held = record.held_out
    detail = {}
    if held is not None:
        detail = {
            name: {"mean": held.mean(name), "spread": held.spread(name), "values": list(v)}
            for name, v in held.scores.items()
        }
    return {
        "nfe": record.nfe,
        "sampler": tuned.sampler,
        "sampler_kwargs": dict(tuned.sampler_kwargs),
        "num_steps": len(tuned.sigmas) - 1,
        "sigmas": [float(s) for s in sigmas.tolist()],
        "lam": [float(v) for v in (-2 * torch.log(sigmas[:-1])).tolist()],
        "held_out": held.export() if held is not None else None,
        "held_out_detail": detail,
        "search_fid": record.search_fid,
        "search_note": "the search's minimum on its own seeds (optimistic; held_out is what "
        "to report)",
        "at_bound": list(record.at_bound),
        "source": "tuned",
        "tuned_origin": record.origin,
        "inner_study": record.study_name,
        "inner_trial": record.search_trial,
        "params": dict(record.params),
        "baselines": {name: s.to_dict() for name, s in record.schedules.items() if name != "tuned"},
    }


def unscored_section(sampler: str, nfe: int, sigmas: Any, source: str) -> dict[str, Any]:
    """A schedule without held-out figures of its own (from the step density, or from
    ``sigmatune schedule``); ``source`` says where it came from."""
    s = validate(sigmas)
    return {
        "nfe": int(nfe),
        "sampler": sampler,
        "sampler_kwargs": {},
        "num_steps": s.numel() - 1,
        "sigmas": [float(v) for v in s.tolist()],
        "lam": [float(v) for v in (-2 * torch.log(s[:-1])).tolist()],
        "held_out": None,
        "source": source,
    }


def density_section(density: dict[str, Any], nfe: int) -> dict[str, Any]:
    """A budget that was never tuned: the quantiles of the step density over lam fitted to
    the trial's tuned schedules (``study.schedules.density_schedule``), with no held-out
    figures of its own."""
    sampler = str(density["sampler"])
    sigmas = density_schedule(density, nfe)
    return {
        **unscored_section(sampler, nfe, sigmas, "density"),
        "density": {
            **density,
            "note": f"NFE {nfe} was not tuned: these are the quantiles of one density over lam "
            f"fitted to the tuned schedules at NFE {density.get('nfe')}, between their sigma "
            "ranges interpolated in the number of steps; not scored",
        },
        "baselines": {},
    }


def export_document(study: StudyRecord, trial: int | None = None, nfe: int | None = None) -> dict:
    """The JSON export of an outer trial (default: the best complete one), for all its NFE
    budgets or only ``nfe``. Strict JSON (non-finite floats as strings), valid against
    :func:`load_schema`."""
    chosen = choose_trial(study, trial)
    if chosen.objective is None and study.kind != "sampling":
        raise ValueError(f"trial {chosen.number} of study {study.name!r} has no training weighting")
    schedules = {
        str(k): (
            schedule_section(chosen.inner[k])
            if k in chosen.inner
            else density_section(dict(chosen.density or {}), k)
        )
        for k in _budgets(study, chosen, nfe)
    }
    config = study.config.to_dict()
    config["storage"] = redact(config["storage"])
    doc = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "sigmatune:schema": records.SCHEMA,
        "study": study.name,
        "kind": study.kind,
        "source": study.source,
        "trial": chosen.number,
        "original_trial": chosen.original_trial,
        "is_best": study.best is not None and study.best.number == chosen.number,
        "name": chosen.name,
        "dataset": study.config.dataset,
        "primary_nfe": study.primary_nfe,
        "fid": chosen.value,
        "fid_settings": {
            "extractor": study.config.inner.fid_extractor,
            "num_images": study.seeds.num_images,
            "search_seeds": [study.seeds.search_start, study.seeds.search_images],
            "held_out_seeds": study.seeds.export(),
            "floors": study.floors,
        },
        "model_artifact": chosen.model_artifact,
        "model_info": study.model_info,
        "training": None if chosen.objective is None else training_section(dict(chosen.objective)),
        "schedules": schedules,
        "config": config,
    }
    return json_safe(doc)


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
        KDIFFUSION_KWARGS[k]: float(v) for k, v in sampler_kwargs.items() if k in KDIFFUSION_KWARGS
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
    held = sched.get("held_out") or {}
    return {
        "sigmas": torch.tensor(sched["sigmas"], dtype=torch.float64),
        "nfe": int(sched["nfe"]),
        "sampler": sched["sampler"],
        "k_diffusion_sampler": KDIFFUSION_SAMPLERS.get(sched["sampler"], ""),
        "sampler_kwargs": kdiffusion_kwargs(sched["sampler_kwargs"]),
        "fid": held.get("tuned"),
        "source": sched.get("source", "tuned"),
        "study": doc["study"],
        "trial": None if doc["trial"] is None else int(doc["trial"]),
        "snippet": kdiffusion_snippet(doc, nfe, path),
    }


DIFFUSERS_TUNED_FOR = (
    "each schedule was tuned for the sigmatune sampler named in its 'sampler' (euler, heun or "
    "dpmpp_2m), and NFE counts model evaluations of that sampler; the diffusers scheduler "
    "that runs the same method is the one whose 'same_method_as' names it (Euler: "
    "EulerDiscreteScheduler / FlowMatchEulerDiscreteScheduler; heun: HeunDiscreteScheduler; "
    "dpmpp_2m: DPMSolverMultistepScheduler). Another scheduler runs another method at these "
    "noise levels: usable, but not what was tuned"
)


def _model_schedulers(sigmas: list[float], info: dict[str, Any] | None) -> dict[str, Any] | None:
    """What each of the model's own diffusers schedulers accepts for ``sigmas`` (None without
    a stored diffusers model)."""
    if not info or not info.get("scheduler_config"):
        return None
    return diffusers_arguments(sigmas, info["scheduler_config"])


def _diffusers_schedule(sched: dict[str, Any], info: dict[str, Any] | None) -> dict[str, Any]:
    sigmas = [float(v) for v in sched["sigmas"]]
    out = {
        "nfe": sched["nfe"],
        "sampler": sched["sampler"],
        "sampler_kwargs": sched["sampler_kwargs"],
        "sigmas": sigmas,
        "flow_match_sigmas": [s / (1 + s) for s in sigmas[:-1]],
        "held_out": sched.get("held_out"),
        "source": sched.get("source", "tuned"),
    }
    schedulers = _model_schedulers(sigmas, info)
    if schedulers is not None:
        out["schedulers"] = schedulers
    return out


def diffusers_document(doc: dict[str, Any], nfe: int | None = None) -> dict[str, Any]:
    """The sigmas for ``EulerDiscreteScheduler.set_timesteps(sigmas=...)`` with notes on
    which diffusers schedulers accept them: at the top level the primary NFE's (or
    ``nfe``'s), under ``schedules`` every NFE of ``doc`` (or only ``nfe``). With a stored
    diffusers model (``doc["model_info"]``), each NFE also has ``schedulers``: what each of
    the model's own schedulers accepts (:func:`_model_schedulers`)."""
    sched = _one_schedule(doc, nfe)
    sigmas = sched["sigmas"]
    info = doc.get("model_info")
    keys = [str(nfe)] if nfe is not None else list(doc["schedules"])
    model = None
    if info:
        model = {k: v for k, v in info.items() if k != "scheduler_config"}
        model["scheduler"] = (info.get("scheduler_config") or {}).get("_class_name")
    return {
        "sigmas": list(sigmas),
        "scheduler": "EulerDiscreteScheduler",
        "usage": "scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config); "
        "scheduler.set_timesteps(sigmas=sigmas)  # the whole list, final 0 included",
        "flow_match_sigmas": [s / (1 + s) for s in sigmas[:-1]],
        "nfe": sched["nfe"],
        "sampler": sched["sampler"],
        "sampler_kwargs": sched["sampler_kwargs"],
        "held_out": sched.get("held_out"),
        "source": sched.get("source", "tuned"),
        "study": doc["study"],
        "trial": doc["trial"],
        "tuned_for": DIFFUSERS_TUNED_FOR,
        "model": model,
        "schedules": {k: _diffusers_schedule(doc["schedules"][k], info) for k in keys},
        "notes": list(DIFFUSERS_NOTES),
    }


@dataclass
class ExportResult:
    """What :func:`export` wrote: ``paths`` (empty when ``text`` went to stdout), the text of
    a text format, and a message for the user (the k-diffusion snippets)."""

    document: dict[str, Any]
    format: str
    paths: list[Path] = field(default_factory=list)
    text: str = ""
    message: str = ""


def _kdiffusion(doc: dict[str, Any], nfe: int | None, output: str | Path | None) -> ExportResult:
    """One tensor file per NFE (or only ``nfe``): ``output`` names the file when one NFE is
    written, or the (existing) folder when several are (default: the current folder). Every
    path is checked (:func:`check_output`) before any is written."""
    result = ExportResult(document=doc, format="k-diffusion")
    budgets = [int(nfe)] if nfe is not None else [int(k) for k in doc["schedules"]]
    single = len(budgets) == 1 and output is not None and not _is_dir(output)
    folder = Path(output) if output is not None and not single else Path(".")
    if not single and not _is_dir(folder):
        raise ValueError(
            f"the export output folder {str(folder)!r} does not exist; the k-diffusion format "
            f"writes one file per NFE ({', '.join(map(str, budgets))}) into a folder: create "
            "it first, or give --nfe K and a file name (-o sigmas.pt)"
        )
    paths = {
        k: check_output(
            Path(output)
            if single
            else folder / f"{file_stem(doc['study'], doc['trial'])}-nfe-{k}.pt",
            "export",
            "sigmas.pt",
        )
        for k in budgets
    }
    messages = []
    for k, path in paths.items():
        sched = _one_schedule(doc, k)
        payload = kdiffusion_payload(doc, k, path)
        atomic_write(path, lambda tmp, payload=payload: Path(tmp).write_bytes(torch_bytes(payload)))
        result.paths.append(path)
        messages.append(
            f"# NFE {k} ({sched['sampler']}, held-out FID "
            f"{records.fid_text(payload['fid'])}): {path}\n{payload['snippet']}"
        )
    result.message = (
        f"# sigmas of study {doc['study']!r}, trial {doc['trial']}; k-diffusion:\n"
        + "".join(messages)
    )
    return result


def render(
    doc: dict[str, Any], fmt: str, *, nfe: int | None = None, output: str | Path | None = None
) -> ExportResult:
    """Write ``doc`` in ``fmt`` to ``output`` (text formats: returned as ``text`` when
    ``output`` is None; k-diffusion: every NFE, see :func:`_kdiffusion`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "k-diffusion":
        return _kdiffusion(doc, nfe, output)
    result = ExportResult(document=doc, format=fmt)
    if fmt == "json":
        text = dumps(doc)
    elif fmt == "csv":
        text = to_csv(doc)
    else:
        text = dumps(diffusers_document(doc, nfe))
    if output:
        example = "export.csv" if fmt == "csv" else "export.json"
        result.paths.append(write_text_atomic(check_output(output, "export", example), text))
    else:
        result.text = text
    return result


DOCUMENT_FORMAT = "sigmatune-schedule"


DOCUMENT_VERSION = 1


def schedule_document(
    placement: Placement,
    *,
    sampler: str,
    nfe: int,
    source: str | None,
    sigma_min: float,
    sigma_max: float,
    model_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The document the export writers read (:func:`to_csv`,
    ``kdiffusion_payload``, ``diffusers_document``), for one schedule outside any study
    (``model_info``: a diffusers model's, for the arguments of its own schedulers)."""
    section = unscored_section(sampler, nfe, placement.sigmas, placement.method)
    return json_safe(
        {
            "format": DOCUMENT_FORMAT,
            "version": DOCUMENT_VERSION,
            "method": placement.method,
            "model": source,
            "study": None,
            "trial": None,
            "primary_nfe": int(nfe),
            "sigma_min": float(sigma_min),
            "sigma_max": float(sigma_max),
            "cost": costs(placement),
            "info": dict(placement.info),
            "model_info": model_info,
            "schedules": {str(nfe): section},
        }
    )


def write_schedule_files(doc: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write ``doc``'s schedule in every export format into ``folder`` (atomically), named
    ``METHOD-SAMPLER-nfeK``: ``.json`` (the document), ``.csv``, ``.pt`` (k-diffusion,
    ``torch.load(weights_only=True)["sigmas"]``) and ``.diffusers.json``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {str(folder)!r} is a file; give a folder (-o FOLDER)")
    nfe = int(doc["primary_nfe"])
    sched = doc["schedules"][str(nfe)]
    stem = folder / f"{doc['method']}-{sched['sampler']}-nfe{nfe}"
    names = (".json", ".csv", ".pt", ".diffusers.json")
    if folder.is_dir():  # anyone else's file of the same name is refused before any write
        for suffix in names:
            check_output(stem.with_suffix(suffix), "schedule", "FOLDER")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_text_atomic(stem.with_suffix(".json"), dumps(doc)),
        "csv": write_text_atomic(stem.with_suffix(".csv"), to_csv(doc)),
    }
    pt = stem.with_suffix(".pt")
    payload = kdiffusion_payload(doc, nfe, pt)
    paths["k-diffusion"] = atomic_write(pt, lambda tmp: torch.save(payload, tmp))
    paths["diffusers"] = write_text_atomic(
        stem.with_suffix(".diffusers.json"), dumps(diffusers_document(doc, nfe))
    )
    return paths
