"""The paired objective of the inner search (issue 18, item 3): ``inner.objective = "paired"``
ranks a schedule by its paired bound, the discretisation error against a many-step reference
run over its own sigma range from the same noise, with that reference's FID for the range.

Checked against closed forms: for one Gaussian N(mu, s^2 I) the probability-flow ODE moves
``x - mu`` by ``sqrt(s^2 + sigma^2)``, so the sample of the exact flow from ``smax * eps`` to
``smin``, then denoised, is ``mu + s^2 / sqrt((s^2 + smin^2)(s^2 + smax^2)) * smax * eps``."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
import torch

from sigmatune.models.analytic import GaussianMixture
from sigmatune.models.data import Dataset, gmm2d_mixture
from sigmatune.models.samplers import generate
from sigmatune.models.schedules import karras
from sigmatune.study import inner, records, schedules, scoring, spaces
from sigmatune.study.commands.cli import main
from sigmatune.study.config import ConfigError, load_config
from sigmatune.study.context import make_context, make_scorer
from sigmatune.study.records import Schedule

MU = (0.3, -0.2)
S = 0.5
RANGE = (0.02, 20.0)
N = 128


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(tmp_path, **changes):
    return load_config(
        "toy",
        {
            "storage": f"sqlite:///{tmp_path / 'paired.db'}",
            "device": "cpu",
            "inner.fid_num_images": N,
            "inner.batch_size": N,
            **changes,
        },
    )


@pytest.fixture(scope="module")
def gauss(tmp_path_factory):
    """A context whose data is one Gaussian and whose scorer's features are the samples."""
    tmp = tmp_path_factory.mktemp("paired")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = _config(tmp, **{"inner.fid_extractor": "raw"})
    ctx = make_context(
        config, storage=optuna.storages.InMemoryStorage(), progress=False, log=lambda _m: None
    )
    mixture = GaussianMixture(torch.tensor([MU]), S)
    x = mixture.sample(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    data = Dataset("gauss", x, (2,), float(x.double().std()), None, analytic=mixture)
    scorer = make_scorer(config, data, tmp / "fid-cache", torch.device("cpu"))
    return dataclasses.replace(ctx, data=data, scorer=scorer), mixture


def _noise(ctx, seeds, smax: float) -> torch.Tensor:
    """``smax * eps`` of each seed as ``generate`` draws it (through a denoiser that leaves x
    as it is, one Euler step: x + (0 - smax) * 0)."""
    sigmas = torch.tensor([smax, 0.0], dtype=torch.float64)
    return torch.cat(list(generate(lambda x, s: x, sigmas, "euler", seeds, (2,), len(seeds))))


def _exact(ctx, seeds, smin: float, smax: float) -> torch.Tensor:
    mu = torch.tensor(MU, dtype=torch.float64)
    factor = S**2 / math.sqrt((S**2 + smin**2) * (S**2 + smax**2))
    return mu + factor * (_noise(ctx, seeds, smax).double() - mu)


def test_the_reference_run_is_the_exact_flow_of_a_gaussian(gauss):
    """Within 0.3% of the samples' scale at the product's steps, and second order: 4x the
    steps come 16x closer (at least 10x here)."""
    ctx, D = gauss
    seeds = ctx.seeds.search
    exact = _exact(ctx, seeds, *RANGE)
    ref = scoring.reference_run(ctx, D, *RANGE, seeds)
    assert ref.features.shape == (N, 2)
    assert ref.sigmas == scoring.reference_schedule(*RANGE).sigmas
    assert len(ref.sigmas) == scoring.REFERENCE_STEPS + 1
    error = float((ref.features - exact).abs().max())
    assert error < 3e-3 * float(exact.abs().max())
    finer = scoring.reference_run(ctx, D, *RANGE, seeds, 4 * scoring.REFERENCE_STEPS)
    assert float((finer.features - exact).abs().max()) < error / 10


def test_the_reference_schedule_has_paired_distance_zero(gauss):
    ctx, D = gauss
    cache = scoring.ReferenceCache()
    score = scoring.paired_score(
        ctx, D, scoring.reference_schedule(*RANGE), ctx.seeds.search, cache
    )
    assert score.paired == 0.0
    assert score.value == pytest.approx(score.reference_fid, rel=1e-12)
    assert score.fid == pytest.approx(score.reference_fid, rel=1e-9)


def test_the_paired_distance_shrinks_with_steps_to_the_exact_samples(gauss):
    """P against the reference equals the mean squared distance to the exact flow's samples
    (the reference's own error being far smaller), and falls as the steps grow."""
    ctx, D = gauss
    seeds = ctx.seeds.search
    exact = _exact(ctx, seeds, *RANGE)
    cache = scoring.ReferenceCache()
    found = []
    for n in (2, 4, 8, 16):
        sched = Schedule("heun", tuple(karras(n, *RANGE, 7.0).tolist()))
        score = scoring.paired_score(ctx, D, sched, seeds, cache)
        x = torch.cat(list(generate(D, karras(n, *RANGE, 7.0), "heun", seeds, (2,), N)))
        to_exact = float(((x.double() - exact) ** 2).sum()) / (N - 1)
        if n <= 8:  # (at 16 steps the reference's own error, 1/16 of it, shows)
            assert score.paired == pytest.approx(to_exact, rel=0.05)
        found.append(score.paired)
    assert all(b < a / 4 for a, b in zip(found, found[1:]))
    assert cache.computed == 1  # one range: one reference run


def test_the_paired_bound_bounds_the_fid_on_the_same_seeds(gauss):
    """sqrt(FID) <= sqrt(FID_ref) + sqrt(P): the Fréchet distance is a metric and the seeds
    couple the two sample sets (with the FID's unbiased covariances, P divides by N - 1)."""
    ctx, D = gauss
    seeds = ctx.seeds.search
    cache = scoring.ReferenceCache()
    for smin, smax, n in ((0.002, 80.0, 3), (0.1, 2.0, 2), (0.02, 20.0, 5), (0.5, 5.0, 4)):
        sched = Schedule("heun", tuple(karras(n, smin, smax, 3.0).tolist()))
        score = scoring.paired_score(ctx, D, sched, seeds, cache)
        direct = scoring.score_schedule(ctx, D, sched, seeds)
        assert score.fid == pytest.approx(direct, rel=1e-9)
        assert math.sqrt(score.fid) <= math.sqrt(score.reference_fid) + math.sqrt(score.paired)
        assert score.value == pytest.approx(
            (math.sqrt(score.reference_fid) + math.sqrt(score.paired)) ** 2
        )
    assert cache.computed == 4 and len(cache) == 4


def test_references_are_kept_per_range_and_dropped_least_recent_first(gauss):
    ctx, D = gauss
    seeds = ctx.seeds.search
    cache = scoring.ReferenceCache(size=2)
    a = cache.get(ctx, D, 0.1, 2.0, seeds, steps=8)
    assert cache.get(ctx, D, 0.1, 2.0, seeds, steps=8) is a and cache.computed == 1
    cache.get(ctx, D, 0.2, 2.0, seeds, steps=8)
    cache.get(ctx, D, 0.3, 2.0, seeds, steps=8)
    assert cache.computed == 3 and len(cache) == 2
    assert cache.get(ctx, D, 0.1, 2.0, seeds, steps=8) is not a  # dropped, computed again
    assert cache.computed == 4
    other = GaussianMixture(torch.tensor([MU]), S)  # another denoiser: its own references
    cache.get(ctx, other, 0.1, 2.0, seeds, steps=8)
    assert cache.computed == 5


def test_a_bad_objective_is_one_paragraph_naming_the_allowed_values(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"inner\.objective must be one of fid, paired.*'l2'"):
        load_config("toy", {"inner.objective": "l2"})
    assert load_config("toy").inner.objective == "fid"
    (tmp_path / "c.toml").write_text('[inner]\nobjective = "l2"\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["run", str(tmp_path / "c.toml"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "inner.objective" in err and "'l2'" in err and "fid, paired" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_prefix_pruning_is_off_for_the_paired_objective():
    tpe = {"inner.sampler": "tpe", "inner.prune": True}
    assert spaces.inner_pruning(load_config("toy", tpe))
    paired = load_config("toy", {**tpe, "inner.objective": "paired"})
    assert not spaces.inner_pruning(paired)
    assert isinstance(spaces.make_inner_pruner(paired), optuna.pruners.NopPruner)


def test_an_inner_study_ranked_by_the_paired_bound(tmp_path, monkeypatch):
    """Every trial's value is ln of its paired bound, its FID kept beside it; the record is
    the least bound of everything scored (the peers outside the budget included)."""
    monkeypatch.setitem(schedules.DEFAULT_SETTINGS, "gits", {"num_noises": 8, "teacher_steps": 12})
    monkeypatch.setitem(
        schedules.DEFAULT_SETTINGS, "ld3", {"num_noises": 8, "teacher_steps": 12, "iterations": 2}
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = _config(
        tmp_path,
        **{
            "inner.objective": "paired",
            "inner.inner_trials": 6,
            "inner.sampler": "random",
            "inner.nfe_budgets": [7],
            "inner.fid_num_images": 64,
            "inner.batch_size": 64,
        },
    )
    ctx = make_context(
        config, storage=optuna.storages.InMemoryStorage(), progress=False, log=lambda _m: None
    )
    record = inner.tune_steps(ctx, gmm2d_mixture(), "p/nfe-7", 7)
    study = optuna.load_study(study_name="p/nfe-7", storage=ctx.storage)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 6
    values = {}
    for t in done:
        paired = t.user_attrs[records.PAIRED]
        assert t.value == pytest.approx(math.log(paired["value"]))
        assert t.user_attrs[records.FID] == pytest.approx(paired["fid"])
        assert paired["value"] >= paired["fid"] * (1 - 1e-9)  # the bound
        values[t.number] = paired["value"]
    outside = records.read_peer_search_paired(study)
    assert set(outside) == {"gits", "ld3"}  # not points of the density space at 4 steps
    least = min(*values.values(), *outside.values())
    if record.origin in outside:
        assert outside[record.origin] == pytest.approx(least)
    else:
        assert values[record.search_trial] == pytest.approx(least)
    assert math.isfinite(record.held_out.mean("tuned"))
    assert len(ctx.paired_references) >= 1
