"""The step density as the searched object (issue 18, item 2): ``inner.space = "density"``
searches a two-parameter density over the steps, shared by every NFE budget, in which karras
of every rho and loglinear are points; schedules map to it and back exactly."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from sigmatune.models.data import gmm2d_mixture
from sigmatune.models.samplers import steps_for_nfe
from sigmatune.models.schedules import karras, loglinear
from sigmatune.study import inner, records, schedules, spaces
from sigmatune.study.commands.cli import main
from sigmatune.study.config import ConfigError, load_config
from sigmatune.study.context import make_context

DENSITY = load_config("toy", {"inner.space": "density"})


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 20])
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0, 12.5])
def test_karras_of_every_rho_is_the_density_at_a_one_over_rho(n, rho):
    got = spaces.density_sigmas(n, 0.002, 80.0, 1.0 / rho, 1.0)
    assert got.tolist() == pytest.approx(karras(n, 0.002, 80.0, rho).tolist(), rel=1e-12)


@pytest.mark.parametrize("n", [2, 5, 9])
def test_loglinear_is_the_density_at_a_zero(n):
    got = spaces.density_sigmas(n, 0.01, 5.0, 0.0, 1.0)
    assert got.tolist() == pytest.approx(loglinear(n, 0.01, 5.0).tolist(), rel=1e-12)


def test_the_warp_moves_steps_toward_the_low_noise_end_or_away():
    """c > 1: the first steps come slowly (more of them at high noise); c < 1 the reverse;
    the Box-Cox coordinate of step i is t_i^c of the way (a closed form)."""
    a, n = 0.25, 6
    for c in (0.5, 1.0, 2.0):
        s = spaces.density_sigmas(n, 0.01, 10.0, a, c)[:-1]
        y = (s**a - 1) / a
        frac = (y - y[0]) / (y[-1] - y[0])
        t = torch.linspace(0, 1, n, dtype=torch.float64)
        assert frac.tolist() == pytest.approx((t**c).tolist(), abs=1e-12)


@pytest.mark.parametrize(
    "sigmas",
    [
        karras(5, 0.002, 80.0, 7.0),
        karras(4, 0.1, 1.5, 3.0),
        loglinear(8, 0.002, 80.0),
        spaces.density_sigmas(5, 0.05, 20.0, 0.37, 1.6),
        spaces.density_sigmas(13, 0.01, 40.0, 0.9, 0.6),
    ],
)
def test_a_schedule_of_the_family_round_trips_through_the_params(sigmas):
    config = DENSITY.replace(**{"inner.nfe_budgets": [2 * (len(sigmas) - 1) - 1]})
    nfe = config.inner.nfe_budgets[0]
    params = spaces.schedule_params(sigmas, "heun", config=config, nfe=nfe)
    assert set(params) == {"sampler", "sigma_min", "sigma_max", "density.a", "density.c"}
    trial = optuna.trial.FixedTrial(params)
    choice = spaces.suggest_schedule(trial, config, nfe)
    assert choice.sigmas.tolist() == pytest.approx(sigmas.tolist(), rel=1e-9)


def test_a_schedule_outside_the_family_is_refused():
    odd = torch.tensor([1.5, 1.2, 0.15, 0.1, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"inner.space = 'density'"):
        spaces.schedule_params(odd, "heun", config=DENSITY, nfe=7)


def test_one_set_of_params_gives_the_schedule_of_every_budget():
    """The same density params at NFE 5 and 15: the same density, drawn at 3 and 8 steps."""
    params = {
        "sampler": "heun",
        "sigma_min": 0.05,
        "sigma_max": 3.0,
        "density.a": 0.2,
        "density.c": 1.3,
    }
    for nfe in (5, 15):
        n = steps_for_nfe("heun", nfe)
        choice = spaces.suggest_schedule(optuna.trial.FixedTrial(params), DENSITY, nfe)
        expected = spaces.density_sigmas(n, 0.05, 3.0, 0.2, 1.3)
        assert choice.sigmas.tolist() == pytest.approx(expected.tolist())


def test_a_bad_space_name_is_one_paragraph_naming_the_allowed_values(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"inner\.space.*gaps.*density"):
        load_config("toy", {"inner.space": "spline"})
    (tmp_path / "c.toml").write_text('[inner]\nspace = "spline"\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["run", str(tmp_path / "c.toml"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "gaps" in err and "density" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_inner_study_searches_the_density_and_scores_the_peers_beside_it(tmp_path, monkeypatch):
    """GITS and LD3 are not points of the family: they are scored on the search seeds beside
    the trials, and the record is the best of all."""
    monkeypatch.setitem(schedules.DEFAULT_SETTINGS, "gits", {"num_noises": 8, "teacher_steps": 12})
    monkeypatch.setitem(
        schedules.DEFAULT_SETTINGS, "ld3", {"num_noises": 8, "teacher_steps": 12, "iterations": 2}
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = load_config(
        "toy",
        {
            "storage": f"sqlite:///{tmp_path / 'd.db'}",
            "device": "cpu",
            "inner.space": "density",
            "inner.inner_trials": 8,
            "inner.sampler": "random",
            "inner.nfe_budgets": [7],
            "inner.fid_num_images": 64,
            "inner.batch_size": 64,
        },
    )
    ctx = make_context(
        config, storage=optuna.storages.InMemoryStorage(), progress=False, log=lambda _m: None
    )
    torch.set_num_threads(1)
    record = inner.tune_steps(ctx, gmm2d_mixture(), "d/nfe-7", 7)
    trials = records.read_inner_trials(ctx.storage, "d/nfe-7")
    assert len(trials) == 8
    assert not {"gits", "ld3"} & {t.start for t in trials}
    assert {"gits", "ld3"} <= set(record.search_baselines)
    best_trial = min(t.fid for t in trials if t.fid is not None)
    assert record.search_fid == pytest.approx(min(best_trial, *record.search_baselines.values()))
    for t in trials:
        assert {"density.a", "density.c"} <= set(t.params)
        assert not any(k.startswith("heun.gap_") for k in t.params)
    assert math.isfinite(record.held_out.mean("tuned"))
