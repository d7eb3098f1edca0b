"""study.records: the one owner of the stored layout (keys, writer, typed reader)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import optuna
import pytest

from sigmatune.study import records
from sigmatune.study.config import load_config
from sigmatune.study.records import HeldOut, InnerRecord, Schedule, SeedPlan

ROOT = Path(__file__).resolve().parents[2]


def _held(tuned=(0.1, 0.2, 0.3), floor=0.004, spread=0.001, **others) -> HeldOut:
    scores = {
        "tuned": tuned,
        "karras_rho7": (1.0, 1.1, 1.2),
        "karras_rho7_same_range": (0.4, 0.5, 0.6),
        "loglinear_same_range": (0.5, 0.6, 0.7),
        **others,
    }
    return HeldOut(seeds=(1000, 1000, 3), scores=scores, floor=floor, floor_spread=spread)


def test_held_out_seeds_never_overlap_the_search_seeds():
    for seed, n, sets in ((0, 1000, 3), (2, 256, 5), (7, 50_000, 3)):
        config = load_config(
            "toy",
            {"seed": seed, "inner.fid_num_images": n, "inner.held_out_sets": sets},
        )
        plan = SeedPlan.for_config(config)
        search = set(plan.search)
        held = [set(plan.held_out(k)) for k in range(sets)]
        assert len(search) == n and all(len(h) == n for h in held)
        for i, h in enumerate(held):
            assert not (h & search)
            assert all(not (h & other) for other in held[i + 1 :])
        assert plan.export() == [min(min(h) for h in held), n, sets]
        assert SeedPlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="k must be in"):
        plan.held_out(sets)


def test_a_smaller_search_ranks_on_a_prefix_and_leaves_the_held_out_sets_as_they_were():
    full = SeedPlan.for_config(load_config("toy", {"inner.fid_num_images": 300}))
    small = SeedPlan.for_config(
        load_config("toy", {"inner.fid_num_images": 300, "inner.search_images": 100})
    )
    assert list(small.search) == list(full.search)[:100]
    assert [list(small.held_out(k)) for k in range(3)] == [list(full.held_out(k)) for k in range(3)]
    assert small.export() == full.export()
    assert small.search_note == " (the search ranks on 100)" and full.search_note == ""
    assert SeedPlan.from_dict(small.to_dict()) == small
    # a plan stored before search_images existed searched on all its images
    old = {k: v for k, v in full.to_dict().items() if k != "search_images"}
    assert SeedPlan.from_dict(old) == full and len(full.search) == 300


@pytest.mark.parametrize("value", [1, 301, -1, 2.5])
def test_a_search_larger_than_the_held_out_sets_or_under_two_images_is_refused(value):
    from sigmatune.study.config import ConfigError

    with pytest.raises(ConfigError, match=r"inner\.search_images") as info:
        load_config("toy", {"inner.fid_num_images": 300, "inner.search_images": value})
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_fewer_than_three_held_out_sets_are_refused():
    from sigmatune.study.config import ConfigError

    with pytest.raises(ConfigError, match=r"inner\.held_out_sets must be an integer >= 3"):
        load_config("toy", {"inner.held_out_sets": 2})


def test_held_out_export_has_exactly_the_contract_keys_and_the_means():
    h = _held()
    out = h.export()
    assert list(out) == list(records.EXPORT_HELD_OUT_KEYS)
    assert out["tuned"] == pytest.approx(0.2) and out["tuned_spread"] == pytest.approx(0.1)
    assert out["karras_rho7_same_range"] == pytest.approx(0.5)
    assert out["seeds"] == [1000, 1000, 3] and out["floor"] == 0.004
    # a peer method adds its own key, after the contract's
    with_peer = _held(gits=(0.3, 0.3, 0.3)).export()
    assert with_peer["gits"] == pytest.approx(0.3)


def test_no_ratio_between_two_scores_at_the_floor():
    h = _held(
        tuned=(0.004, 0.005, 0.003),
        karras_rho7_same_range=(0.005, 0.004, 0.005),
    )
    assert h.at_floor("tuned") and h.at_floor("karras_rho7_same_range")
    assert h.ratio("tuned", "karras_rho7_same_range") is None
    assert h.ratio("karras_rho7_same_range", "karras_rho7") == pytest.approx((0.014 / 3) / 1.1)
    line = records.held_out_line(
        InnerRecord(
            nfe=5,
            study_name="s/nfe-5",
            search_fid=0.003,
            search_trial=4,
            params={},
            schedules={"tuned": Schedule("heun", (1.0, 0.1, 0.0))},
            search_baselines={},
            held_out=h,
        )
    )
    assert "(at the floor)" in line and "step placement: both at the floor" in line
    assert "step placement x" not in line


def test_floor_line_names_its_images_method_and_resolution():
    from sigmatune.objectives.fid import Floors, resolution

    for floor, spread in [(2.0, 0.81), (0.004, 0.001), (0.0, 0.1), (1.0, math.nan)]:
        assert records.floor_resolution(floor, spread) == resolution(floor, spread)
    f = Floors.from_values(
        [1.2, 1.4, 1.6],
        [50.0, 60.0],
        floor_num_images=1000,
        floor_source="held_out",
        floor_method="extrapolated",
        held_out_images=797,
    )
    line = records.floor_text(f.to_dict(), 1000)
    assert line.startswith("floor (real vs real) 1.4 ± 0.2 on 1,000 images (extrapolated from")
    assert "the 797 held-out images, fewer than a score uses" in line
    assert line.endswith("resolution x1.29")  # (1.4 + 2 x 0.2) / 1.4
    assert "biased high" not in line
    old = {"floor": 2.0, "floor_spread": 0.81, "floor_num_images": 637, "ceiling": 9.0}
    line = records.floor_text(old, 1000)  # a study's floors from before issue 19
    assert "on 637 images — fewer than a score's 1,000: this floor is biased high" in line
    assert line.endswith("resolution x1.81")
    assert "resolution x1.5" in records.held_out_line(
        InnerRecord(
            nfe=5,
            study_name="s/nfe-5",
            search_fid=0.003,
            search_trial=4,
            params={},
            schedules={"tuned": Schedule("heun", (1.0, 0.1, 0.0))},
            search_baselines={},
            held_out=_held(),
        )
    )


def test_gain_splits_into_sigma_range_and_step_placement():
    h = _held()
    range_gain = h.ratio("karras_rho7_same_range", "karras_rho7")
    placement = h.ratio("tuned", "karras_rho7_same_range")
    assert range_gain * placement == pytest.approx(h.mean("tuned") / h.mean("karras_rho7"))


def test_inner_record_round_trips_through_json():
    import json

    record = InnerRecord(
        nfe=9,
        study_name="x/trial-0000/nfe-9",
        search_fid=0.5,
        search_trial=3,
        params={"heun.gap_0": 0.3},
        schedules={
            "tuned": Schedule("heun", (80.0, 1.0, 0.0), {"S_churn": 1.0, "S_max": math.inf}),
            "karras_rho7": Schedule("heun", (80.0, 2.0, 0.0)),
        },
        search_baselines={"karras_rho7": 0.9},
        held_out=_held(),
        at_bound=("sigma_max=low",),
        costs={"gits": {"denoiser_calls": 100.0, "seconds": 0.5}},
    )
    text = json.dumps(record.to_dict())  # what Optuna stores
    assert InnerRecord.from_dict(json.loads(text)) == record
    assert record.value == pytest.approx(0.2)


def test_reader_refuses_inner_studies_unknown_names_and_other_schemas(synthetic_study):
    storage = synthetic_study.storage
    with pytest.raises(ValueError, match="no study named 'nope'.*synth"):
        records.read_study(storage, "nope")
    with pytest.raises(ValueError, match="not a sigmatune outer study"):
        records.read_study(storage, "synth/trial-0000/nfe-5")
    old = optuna.create_study(study_name="old", storage=storage)
    old.set_user_attr(records.ROLE, "outer")
    old.set_user_attr(records.SCHEMA_KEY, 1)
    with pytest.raises(ValueError, match="schema 2 only"):
        records.read_study(storage, "old")


def test_reader_gives_the_written_records(synthetic_study):
    study = records.read_study(synthetic_study.storage, synthetic_study.name)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state for t in study.trials] == ["COMPLETE"] * 3 + ["FAIL"]
    assert study.best.number == synthetic_study.best_number
    assert study.edm.number == 0 and study.edm.name == "edm"
    assert study.nfe_budgets == [5, 9] and study.primary_nfe == 5
    assert study.trials[3].fail_reason.startswith("NonFiniteLossError")
    assert study.config.name == "synth" and study.floors["floor"] == 0.004
    for number, exp in synthetic_study.expected.items():
        t = study.trial(number)
        assert t.objective == exp["description"]
        assert t.inner == exp["inner"]
        for record in t.inner.values():
            assert record.study_name in study.study_ids
    with pytest.raises(ValueError, match="no trial number=7"):
        study.trial(7)
    # the long records are not user attrs (optuna-dashboard's trial page shows those)
    ft = optuna.load_study(study_name="synth", storage=synthetic_study.storage).trials[1]
    assert records.INNER not in ft.user_attrs and records.INNER in ft.system_attrs
    assert all(len(str(v)) < 400 for v in ft.user_attrs.values())


def test_a_retry_starts_without_the_failed_attempts_outcome(tmp_path):
    """A retried trial starts with copies of the failed one's attrs (Optuna's retry
    callback); begin_outer_trial clears the reason, note, training record and model."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}")
    study = optuna.create_study(study_name="r", storage=storage)
    failed = study.ask()
    desc = {
        "parameterisation": "edm",
        "sigma_data": 0.5,
        "density": {"name": "lognormal", "params": {}},
        "weighting": {"name": "unit", "params": {}},
    }
    records.begin_outer_trial(failed, desc, failed.number, None)
    records.write_failure(failed, RuntimeError("boom"))
    records.write_model_artifact(failed, "abc")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryFailedTrialCallback()(study, study.trials[0])
    retry = study.ask()
    assert retry.user_attrs[records.FAIL_REASON] == "RuntimeError: boom"  # copied by Optuna
    records.begin_outer_trial(retry, desc, 0, None)
    t = records.read_trial(storage.get_trial(retry._trial_id))
    assert t.fail_reason is None and t.model_artifact is None and t.retry_of == 0


def test_objective_label_names_every_part():
    d = {
        "parameterisation": "v",
        "density": {"name": "piecewise", "params": {"heights": [1.0, 2.0]}},
        "weighting": {"name": "snr", "params": {"k": 0.5}},
        "adaptive": {"name": "importance", "params": {}},
    }
    assert records.objective_label(d) == "v snr(0.5) piecewise([1,2]) +importance"
    assert records.objective_label(None) == "?"


# ------------------------------------------------------------------------------ layering


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    packages = {
        "sigmatune",
        *(f"sigmatune.{p}" for p in ("objectives", "models", "study", "dashboards")),
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in packages:
            out.update(f"{node.module}.{a.name}" for a in node.names)  # submodules
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("sigmatune.")}


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("objectives", ("sigmatune.objectives",)),
        ("models", ("sigmatune.objectives", "sigmatune.models")),
        (
            "dashboards",
            (
                "sigmatune.objectives",
                "sigmatune.models",
                "sigmatune.dashboards",
                "sigmatune.study.records",
                "sigmatune.study.config",
            ),
        ),
    ],
)
def test_imports_go_one_way_in_layers(package, allowed):
    """docs/development.md's layers: objectives imports nothing of the project, models only
    objectives, dashboards objectives, models and the two leaf modules that describe what a
    study stores (study.records, study.config) — never the runner."""
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in _imports(path):
            if not module.startswith(allowed):
                bad.append(f"{path.relative_to(ROOT)}: {module}")
    assert bad == []


def test_the_leaf_modules_of_study_import_no_runner():
    leaves = (
        "urls",
        "records",
        "config",
        "optuna_adapter",
        "storage",
        "artifacts",
        "errors",
        "names",
    )
    for name in leaves:
        for module in _imports(ROOT / "study" / f"{name}.py"):
            assert module in {f"sigmatune.study.{leaf}" for leaf in leaves} or not (
                module.startswith("sigmatune.study")
            ), (name, module)
