"""What one inner study hands the next (issue 18, items 1 and 6): the sigma ranges and step
densities that other budgets of the model and other outer trials found are starting points
at every NFE; the spread starting points vary the sigma range; the reported schedule is the
best of everything the study scored on its search seeds, peers included whatever the trial
budget, and says where it came from."""

from __future__ import annotations

import dataclasses
import json
import math

import optuna
import pytest
import torch

from sigmatune.models.data import gmm2d_mixture
from sigmatune.models.samplers import steps_for_nfe
from sigmatune.models.schedules import karras, loglinear
from sigmatune.study import inner, records, schedules, spaces
from sigmatune.study.config import load_config
from sigmatune.study.context import make_context
from sigmatune.study.records import InnerRecord, Peer, Schedule

TINY = {
    "gits": {"num_noises": 16, "teacher_steps": 12},
    "ld3": {"num_noises": 8, "teacher_steps": 12, "iterations": 4},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def tiny_settings(monkeypatch):
    for name, values in TINY.items():
        monkeypatch.setitem(schedules.DEFAULT_SETTINGS, name, values)


def _ctx(tmp_path, **changes):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = load_config(
        "toy",
        {
            "storage": f"sqlite:///{tmp_path / 'transfer.db'}",
            "device": "cpu",
            "inner.inner_trials": 6,
            "inner.sampler": "random",
            "inner.nfe_budgets": [5, 9],
            "inner.fid_num_images": 64,
            "inner.batch_size": 64,
            **changes,
        },
    )
    storage = optuna.storages.InMemoryStorage()
    return make_context(config, storage=storage, progress=False, log=lambda _m: None)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return _ctx(tmp_path_factory.mktemp("transfer"))


@pytest.fixture(scope="module")
def D():
    return gmm2d_mixture()


def _record(nfe: int, sigmas) -> InnerRecord:
    tuned = Schedule("heun", tuple(float(s) for s in sigmas))
    return InnerRecord(nfe, f"x/nfe-{nfe}", 1.0, 0, {}, {"tuned": tuned}, {}, None)


# ------------------------------------------------------------------ the density, resampled


@pytest.mark.parametrize("n_from, n_to", [(3, 5), (5, 3), (4, 4), (2, 9), (9, 2)])
def test_resampling_a_loglinear_schedule_gives_the_loglinear_schedule(n_from, n_to):
    """Uniform in ln sigma is a straight line in the step's fraction: drawn at any count,
    it is loglinear at that count (an independent closed form)."""
    got = inner.resample_schedule(loglinear(n_from, 0.05, 3.0).tolist(), n_to)
    assert got.tolist() == pytest.approx(loglinear(n_to, 0.05, 3.0).tolist(), rel=1e-12)


def test_resampling_keeps_the_ends_and_the_order():
    tuned = karras(5, 0.1, 1.2, 7.0)
    for n in (1, 2, 3, 5, 8, 17):
        got = inner.resample_schedule(tuned.tolist(), n)
        assert got.numel() == n + 1 and got[-1].item() == 0.0
        assert got[0].item() == pytest.approx(1.2)
        if n > 1:
            assert got[-2].item() == pytest.approx(0.1)
        assert bool((got[:-1][1:] < got[:-1][:-1]).all())
    # the same count gives the schedule back
    assert inner.resample_schedule(tuned.tolist(), 5).tolist() == pytest.approx(tuned.tolist())
    # between the knots: each new step's ln sigma lies between its neighbours' (linear)
    got = inner.resample_schedule(tuned.tolist(), 9)
    logs = tuned[:-1].log()
    assert math.log(got[1].item()) == pytest.approx((logs[0] + logs[1]).item() / 2)


# ------------------------------------------------------------------ starting points


def test_spread_starting_points_vary_the_sigma_range_inside_the_space(ctx):
    config = ctx.config
    assert config.inner.tune_sigma_range
    points = spaces.starting_schedules(config, 9)
    assert set(points) == set(spaces.STARTING_RANGES)
    ranges = [(c.sigmas[-2].item(), c.sigmas[0].item()) for c in points.values()]
    assert len({r[0] for r in ranges}) >= 2 and len({r[1] for r in ranges}) >= 2
    for c in points.values():  # each one a point of the search space (round trip)
        params = spaces.schedule_params(c.sigmas, c.sampler, config=config, nfe=9)
        assert params["sigma_min"] > config.sigma_min or params["sigma_max"] < config.sigma_max
    # with the range fixed, karras with other rho over the run's range, as before
    fixed = config.replace(**{"inner.tune_sigma_range": False})
    assert set(spaces.starting_schedules(fixed, 9)) == {
        "karras_rho3",
        "karras_rho5",
        "karras_rho12",
    }


def test_transfer_tries_another_budgets_range_and_density_at_this_nfe(ctx):
    won = torch.tensor([1.5, 1.2, 0.15, 0.1, 0.0], dtype=torch.float64)  # NFE 7 found this
    points = inner.transfer_schedules(ctx, 9, {"nfe7": _record(7, won)})
    n = steps_for_nfe("heun", 9)
    assert set(points) == {
        "karras_rho7_range_of_nfe7",
        "loglinear_range_of_nfe7",
        "density_of_nfe7",
    }
    assert points["karras_rho7_range_of_nfe7"].sigmas.tolist() == pytest.approx(
        karras(n, 0.1, 1.5, 7.0).tolist()
    )
    assert points["loglinear_range_of_nfe7"].sigmas.tolist() == pytest.approx(
        loglinear(n, 0.1, 1.5).tolist()
    )
    # not a member of the density family: its steps resampled
    density = points["density_of_nfe7"].sigmas
    assert density.tolist() == pytest.approx(inner.resample_schedule(won.tolist(), n).tolist())
    # a loglinear winner's density is the loglinear schedule: listed once
    flat = inner.transfer_schedules(ctx, 9, {"nfe5": _record(5, loglinear(3, 0.1, 1.5))})
    assert set(flat) == {"karras_rho7_range_of_nfe5", "loglinear_range_of_nfe5"}


def test_a_winner_of_the_density_family_is_drawn_from_its_density(ctx):
    """karras rho=3 found at NFE 5 is karras rho=3 at NFE 9 (an independent closed form),
    not a resampling of its three steps."""
    n = steps_for_nfe("heun", 9)
    points = inner.transfer_schedules(ctx, 9, {"nfe5": _record(5, karras(3, 0.1, 1.5, 3.0))})
    assert points["density_of_nfe5"].sigmas.tolist() == pytest.approx(
        karras(n, 0.1, 1.5, 3.0).tolist(), rel=1e-9
    )


def test_an_inner_study_starts_from_the_range_another_budget_found(ctx, D):
    won = karras(steps_for_nfe("heun", 5), 0.1, 1.5, 7.0)
    inner.tune_steps(ctx, D, "t/nfe-9", 9, transfer={"nfe5": _record(5, won)})
    trials = sorted(records.read_inner_trials(ctx.storage, "t/nfe-9"), key=lambda t: t.number)
    starts = [t.start for t in trials if t.start]
    assert starts[:2] == ["karras_rho7", "loglinear"]
    assert starts[2] == "karras_rho7_range_of_nfe5"  # before the peers: the model's own
    first = next(t for t in trials if t.start == "karras_rho7_range_of_nfe5")
    assert first.schedule.sigmas[0] == pytest.approx(1.5)
    assert first.schedule.sigmas[-2] == pytest.approx(0.1)


# ------------------------------------------------------------------ never worse than scored


def test_a_peer_that_did_not_fit_the_budget_is_scored_and_chosen_when_it_is_best(
    tmp_path, D, monkeypatch
):
    """Three inner trials leave no room for the peers: they are scored on the search seeds
    beside the trials, and a peer better than every trial is the reported schedule."""
    small = _ctx(tmp_path, **{"inner.inner_trials": 3, "inner.nfe_budgets": [9]})
    n = steps_for_nfe("heun", 9)
    good = karras(n, 0.1, 1.2, 7.0)  # far better than the full-range baselines on the ring

    def fake(ctx_, D_, name, nfe, done):
        sigmas = good if name == "ld3" else karras(n, 0.002, 80.0, 2.0)
        return Peer(Schedule("heun", tuple(sigmas.tolist())), {"denoiser_evaluations": 1.0}, {})

    monkeypatch.setattr(inner, "compute_peer", fake)
    record = inner.tune_steps(small, D, "small/nfe-9", 9)
    trials = records.read_inner_trials(small.storage, "small/nfe-9")
    assert not {"gits", "ld3"} & {t.start for t in trials}  # no room for them as trials
    assert len(trials) == 3
    assert record.origin == "ld3" and record.search_trial == -1
    assert record.tuned == record.schedules["ld3"]
    assert record.search_fid == pytest.approx(record.search_baselines["ld3"])
    assert record.search_fid <= min(t.fid for t in trials if t.fid is not None)
    held = record.held_out
    assert held.tuned_origin == "ld3" and held.scores["tuned"] == held.scores["ld3"]
    # stored and read back, and shown by the export and status
    again = InnerRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again.origin == "ld3"
    # scored once: a resume reads the stored score back
    calls = []
    real = inner.score_schedule
    monkeypatch.setattr(inner, "score_schedule", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert inner.tune_steps(small, D, "small/nfe-9", 9).origin == "ld3" and not calls


def test_the_best_trial_is_kept_when_no_peer_beats_it(tmp_path, D, monkeypatch):
    small = _ctx(tmp_path, **{"inner.inner_trials": 3, "inner.nfe_budgets": [9]})
    n = steps_for_nfe("heun", 9)
    bad = karras(n, 0.002, 80.0, 1.5)

    def fake(ctx_, D_, name, nfe, done):
        return Peer(Schedule("heun", tuple(bad.tolist())), {"denoiser_evaluations": 1.0}, {})

    monkeypatch.setattr(inner, "compute_peer", fake)
    record = inner.tune_steps(small, D, "kept/nfe-9", 9)
    assert record.origin != "gits" and record.origin != "ld3"
    assert record.search_trial >= 0
    assert record.search_fid < record.search_baselines["gits"]
    study = optuna.load_study(study_name="kept/nfe-9", storage=small.storage)
    best = inner.best_trial(study)
    assert record.origin == (best.user_attrs.get(records.START) or "search")


def test_the_export_and_status_say_where_the_tuned_schedule_came_from(synthetic_study):
    import jsonschema

    from sigmatune.study.commands.status import trial_json
    from sigmatune.study.formats import export_document, load_schema
    from sigmatune.study.storage import read_stored_study as read

    study = read(synthetic_study.url, synthetic_study.name)
    doc = export_document(study)
    tuned = [s for s in doc["schedules"].values() if s["source"] == "tuned"]
    assert tuned and all(s["tuned_origin"] == "search" for s in tuned)  # written before
    jsonschema.validate(doc, load_schema())
    best = study.best
    assert set(trial_json(study, best)["tuned_origin"]) == {str(k) for k in best.inner}


def test_the_record_keeps_its_origin_through_replace():
    record = _record(5, karras(3, 0.1, 1.0))
    assert record.origin == "search"
    assert dataclasses.replace(record, origin="ld3").to_dict()["origin"] == "ld3"


def _held(nfe: int, values: tuple[float, ...]) -> InnerRecord:
    from sigmatune.study.records import HeldOut

    held = HeldOut((0, 10, len(values)), {"tuned": values}, floor=0.1, floor_spread=0.01)
    return dataclasses.replace(_record(nfe, karras(3, 0.1, 1.0)), held_out=held)


def test_a_larger_budget_scoring_worse_beyond_both_spreads_is_flagged():
    ok = {5: _held(5, (0.30, 0.32, 0.31)), 9: _held(9, (0.26, 0.27, 0.25))}
    assert records.worse_budgets(ok) == []
    within = {5: _held(5, (0.30, 0.32, 0.31)), 9: _held(9, (0.31, 0.33, 0.32))}
    assert records.worse_budgets(within) == []  # the difference is inside the spreads
    worse = {5: _held(5, (0.30, 0.32, 0.31)), 9: _held(9, (1.07, 1.08, 1.09))}
    (line,) = records.worse_budgets(worse)
    assert line.startswith("NFE 9 scores worse than NFE 5 (1.08 > 0.31")


def test_the_training_density_is_a_starting_point_and_a_held_out_baseline(tmp_path, D):
    """Issue 18 item 5: "sample where you trained" -- the model's p(sigma) as steps, over the
    run's range as a starting point, and over the tuned range as a reported baseline."""
    from sigmatune.models.schedules import from_density
    from sigmatune.objectives.densities import LogNormal

    small = _ctx(
        tmp_path,
        **{"inner.inner_trials": 7, "inner.nfe_budgets": [7], "inner.space": "gaps"},
    )
    training = LogNormal(-1.2, 1.2, sigma_min=0.002, sigma_max=80.0)
    record = inner.tune_steps(small, D, "trained/nfe-7", 7, training=training)
    n = steps_for_nfe("heun", 7)
    trials = records.read_inner_trials(small.storage, "trained/nfe-7")
    start = next(t for t in trials if t.start == "training_density_full_range")
    assert start.schedule.sigmas == pytest.approx(
        from_density(training, n, 0.002, 80.0).tolist(), rel=1e-9
    )
    smin, smax = record.tuned.sigma_range
    assert record.schedules["training_density"].sigmas == pytest.approx(
        from_density(training, n, smin, smax).tolist()
    )
    held = record.held_out
    assert len(held.scores["training_density"]) == small.seeds.held_out_sets
    assert "training_density" in records.held_out_line(record)
