"""``benchmarks/quality_trained.py`` end to end in a tiny mode: the JSON it writes has the
promised structure, and its FIDs and ratios are the ones stored in the studies."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quality_trained.py"

TINY = [
    "--jobs", "2",  # the worker processes, as by default on two CPUs
    "--threads", "1",
    "--quiet",
    "--device", "cpu",
    "--train-nimg", "512",
    "--outer-train-nimg", "512",
    "--fid-images", "32",
    "--inner-trials", "3",
    "--outer-inner-trials", "3",
    "--nfe", "5", "9",
    "--outer-nfe", "5",
    "--outer-trials", "2",
]  # fmt: skip


def _load_script():
    name = "quality_trained_under_test"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("quality_trained")
    db, out = directory / "q.db", directory / "q.json"
    returned = _load_script().main([*TINY, "--keep-db", str(db), "--out", str(out)])
    return returned, json.loads(out.read_text()), f"sqlite:///{db}"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_json_structure(tiny_run) -> None:
    returned, data, _ = tiny_run
    assert data["benchmark"] == "quality_trained"
    assert data["targets"] == json.loads(json.dumps(returned["targets"], default=str))
    machine = data["machine"]
    assert machine["torch"] and machine["device"] == "cpu"
    assert data["seconds"]["total"] > 0
    sched = data["digits"]["schedules"]
    assert sched["train_nimg"] == 512 and sched["objective"].startswith("edm unit lognormal")
    assert [r["nfe"] for r in sched["rows"]] == [5, 9]
    for row in sched["rows"]:
        assert {"karras_rho7", "loglinear", "tuned", "tuned_sigmas", "heldout"} <= set(row)
        assert set(row["heldout"]) == {"karras_rho7", "loglinear", "tuned", "tuned_over_karras"}
        assert row["tuned"] <= min(row["karras_rho7"], row["loglinear"])  # baselines included
    outer = data["digits"]["outer"]
    assert outer["outer_trials"] == 2 and len(outer["trials"]) == 2
    assert outer["trials"][0]["baseline"] == "edm" and outer["trials"][0]["drawn"] == "enqueued"
    assert outer["trials"][1]["drawn"] == "random"  # TPE's start-up trials are random
    assert outer["edm"]["trial"] == 0 and "heldout" in outer["best"]
    names = [t["name"] for t in data["targets"]]
    assert len(names) == 2 and "NFE 9" in names[0] and "outer loop" in names[1]
    assert data["targets"][0]["met"] == (data["targets"][0]["value"] <= 0.7)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ratios_are_the_stored_fids(tiny_run) -> None:
    _, data, url = tiny_run
    sched = data["digits"]["schedules"]
    trial = optuna.load_study(study_name=sched["study"], storage=url).trials[0]
    for row in sched["rows"]:
        nfe = str(row["nfe"])
        stored = trial.user_attrs["inner:baseline_fid"][nfe]
        assert _close(row["tuned"], trial.user_attrs["inner:best_fid"][nfe])
        assert _close(row["karras_rho7"], stored["karras_rho7"])
        assert _close(row["loglinear"], stored["loglinear"])
        assert _close(row["tuned_over_karras"], row["tuned"] / row["karras_rho7"])
        assert _close(row["tuned_over_loglinear"], row["tuned"] / row["loglinear"])
        h = row["heldout"]
        assert _close(h["tuned_over_karras"], h["tuned"] / h["karras_rho7"])
    nine = next(r for r in sched["rows"] if r["nfe"] == 9)
    assert _close(data["targets"][0]["value"], nine["tuned_over_karras"])

    outer = data["digits"]["outer"]
    study = optuna.load_study(study_name=outer["study"], storage=url)
    nfe = str(outer["nfe"])
    for key in ("edm", "best"):
        t = study.trials[outer[key]["trial"]]
        assert _close(outer[key]["tuned"], t.user_attrs["inner:best_fid"][nfe])
        karras = t.user_attrs["inner:baseline_fid"][nfe]["karras_rho7"]
        assert _close(outer[key]["karras_rho7"], karras)
    assert outer["best"]["trial"] == study.best_trial.number
    assert _close(outer["ratio_tuned"], outer["best"]["tuned"] / outer["edm"]["tuned"])
    assert _close(outer["ratio_karras"], outer["best"]["karras_rho7"] / outer["edm"]["karras_rho7"])
    assert _close(data["targets"][1]["value"], outer["ratio_tuned"])
