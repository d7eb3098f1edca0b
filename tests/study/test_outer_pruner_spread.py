"""The outer pruner prunes only outside the interim score's spread (issue 19, item 3): a trial
Optuna's pruner would stop is kept while its interim is within its seed-to-seed spread of the
cut it missed, the decision read from storage alone (so a resumed study decides the same)."""

from __future__ import annotations

import optuna
import pytest

from sigmatune.study import records, spaces
from sigmatune.study.config import load_config
from sigmatune.study.optuna_adapter import pruning_cut


def _study(tmp_path, pruner, db="p"):
    """The study "s" in ``tmp_path/db.db`` (Hyperband's brackets hash the study's name)."""
    return optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / db}.db", pruner=pruner, load_if_exists=True
    )


def _report(study, value, spread, step=1):
    """A new trial reporting ``value`` (with its spread stored) at ``step``; its decision."""
    trial = study.ask()
    records.write_interim(trial, step, spread)
    trial.report(value, step)
    return trial, trial.should_prune()


def test_a_trial_within_the_spread_of_the_cut_survives_and_one_outside_is_pruned(tmp_path):
    study = _study(tmp_path, spaces.HalvingWithinSpread(min_resource=1, reduction_factor=3))
    _, first = _report(study, 1.0, 0.1)
    assert not first  # the best so far: promoted by successive halving itself
    far, far_pruned = _report(study, 2.0, 0.05)
    near, near_pruned = _report(study, 1.08, 0.1)
    assert far_pruned and not near_pruned
    stored = {t.number: records.read_trial(t) for t in study.get_trials()}
    assert stored[near.number].prune_cut[1] == {"cut": 1.0, "spread": 0.1, "pruned": False}
    assert stored[far.number].prune_cut[1]["pruned"] is True
    assert stored[far.number].prune_cut[1]["cut"] == 1.0
    assert stored[near.number].interim_spread == {1: 0.1}


def test_the_plain_pruner_prunes_within_the_spread(tmp_path):
    study = _study(tmp_path, optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
    _report(study, 1.0, 0.1)
    _, near_pruned = _report(study, 1.08, 0.1)
    assert near_pruned  # what the guard prevents


def test_a_resumed_study_decides_from_storage_as_the_first_process(tmp_path):
    first = _study(tmp_path, spaces.HalvingWithinSpread(min_resource=1, reduction_factor=3))
    _report(first, 1.0, 0.1)
    _report(first, 2.0, 0.05)
    # another process: a fresh pruner object on the same storage
    again = _study(tmp_path, spaces.HalvingWithinSpread(min_resource=1, reduction_factor=3))
    _, kept = _report(again, 1.09, 0.1)
    _, pruned = _report(again, 1.5, 0.1)
    assert not kept and pruned
    # a kept trial goes on to the next rung (3 = 1 x 3) and is judged there, not again at 1
    trial, _ = _report(again, 1.0, 0.2)
    records.write_interim(trial, 3, 0.01)
    trial.report(0.5, 3)
    assert not trial.should_prune()


@pytest.mark.parametrize("spread", [0.0, 1e9])
def test_hyperband_guard_is_hyperband_at_zero_spread_and_keeps_all_at_a_huge_one(tmp_path, spread):
    """With spread 0 the guard prunes exactly what Optuna's Hyperband prunes (the cut is the
    bracket's), with an unbounded spread nothing; it stays a HyperbandPruner, so Optuna still
    gives the samplers each trial's bracket."""
    kwargs = {"min_resource": 1, "max_resource": 9, "reduction_factor": 3}
    guarded = _study(tmp_path, spaces.HyperbandWithinSpread(**kwargs), "guarded")
    plain = _study(tmp_path, optuna.pruners.HyperbandPruner(**kwargs), "plain")
    assert isinstance(guarded.pruner, optuna.pruners.HyperbandPruner)
    values = [3.0, 1.0, 2.5, 0.5, 4.0, 1.5, 2.0, 0.8, 3.5, 1.2, 0.9, 2.2]
    a = [_report(guarded, v, spread)[1] for v in values]
    b = [_report(plain, v, spread)[1] for v in values]
    if spread == 0.0:
        assert a == b and any(b)
    else:
        assert not any(a) and any(b)


def test_the_median_guard_compares_with_the_median_of_complete_trials(tmp_path):
    study = _study(tmp_path, spaces.MedianWithinSpread(n_startup_trials=1, n_warmup_steps=0))
    for v in (1.0, 2.0, 3.0):
        t = study.ask()
        t.report(v, 1)
        study.tell(t, v)
    trial, pruned = _report(study, 2.3, 0.5)
    assert not pruned  # median 2.0; 2.3 <= 2.0 + 0.5
    assert pruning_cut(study.pruner, study, study.get_trials()[-1]) == 2.0
    _, pruned = _report(study, 2.6, 0.5)
    assert pruned


def test_make_outer_pruner_guards_unless_asked_not_to():
    config = load_config("toy")
    assert isinstance(spaces.make_outer_pruner(config), spaces.HyperbandWithinSpread)
    plain = spaces.make_outer_pruner(config.replace(**{"outer.prune_within_spread": True}))
    assert type(plain) is optuna.pruners.HyperbandPruner
    halving = config.replace(**{"outer.pruner": "successive_halving"})
    assert isinstance(spaces.make_outer_pruner(halving), spaces.HalvingWithinSpread)
    median = config.replace(**{"outer.pruner": "median"})
    assert isinstance(spaces.make_outer_pruner(median), spaces.MedianWithinSpread)


def test_the_karras_interim_range_is_the_shortest_searched_one_or_the_configured_one():
    from sigmatune.study.outer import interim_sigma_range

    config = load_config("toy")  # sigma range tuned: the inner search's shortest range
    low_space, high_space = spaces.sigma_range_space(config)
    assert interim_sigma_range(config) == (low_space.high, high_space.low)
    assert interim_sigma_range(config) == pytest.approx((0.1, 80 / 80**0.4 * 0.002**0.4), 1e-3)
    fixed = config.replace(**{"inner.tune_sigma_range": False})
    assert interim_sigma_range(fixed) == (0.002, 80.0)  # the range every inner study keeps
    given = config.replace(**{"outer.interim_sigma_range": [0.05, 3.0]})
    assert interim_sigma_range(given) == (0.05, 3.0)


@pytest.mark.parametrize("pair", [[0.001, 3.0], [0.05, 100.0], [3.0, 0.05], [1.0]])
def test_an_interim_sigma_range_outside_the_run_or_malformed_is_refused(pair):
    from sigmatune.study.config import ConfigError

    with pytest.raises(ConfigError, match="outer.interim_sigma_range"):
        load_config("toy", {"outer.interim_sigma_range": pair})


def test_an_unknown_interim_is_refused():
    from sigmatune.study.config import ConfigError

    with pytest.raises(ConfigError, match="outer.interim"):
        load_config("toy", {"outer.interim": "ld3"})
