"""Published step-placement methods inside every inner study (GITS, LD3), and the step density
for any NFE: scored on held-out seeds with their costs, enqueued as starting points where the
space holds them, computed once per inner study and reused on a resume; the density stored
with a trial gives ``export --nfe K`` a schedule at a K that was never tuned."""

from __future__ import annotations

import dataclasses
import json
import math

import optuna
import pytest
import torch

from sigmatune.models.data import gmm2d_mixture
from sigmatune.models.placement import StepDensity, gits
from sigmatune.models.samplers import steps_for_nfe
from sigmatune.models.schedules import karras, validate
from sigmatune.study import inner, records, schedules, spaces
from sigmatune.study.config import load_config
from sigmatune.study.context import make_context
from sigmatune.study.records import InnerRecord, Peer, Schedule

# Small settings: the tests check what is computed and stored, not the methods' quality.
TINY = {
    "gits": {"num_noises": 16, "teacher_steps": 12},
    "ld3": {"num_noises": 8, "teacher_steps": 12, "iterations": 4},
}
NFE = 7  # heun: 4 steps, 3 free gaps


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine, two threads make each small op wait
    milliseconds for the other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def tiny_settings(monkeypatch):
    for name, values in TINY.items():
        monkeypatch.setitem(schedules.DEFAULT_SETTINGS, name, values)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A toy context (the gmm2d data set, 64 images per score) with an in-memory storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directory = tmp_path_factory.mktemp("peers")
    config = load_config(
        "toy",
        {
            "storage": f"sqlite:///{directory / 'peers.db'}",
            "device": "cpu",
            "inner.inner_trials": 7,  # baselines, peers, two other starts, one drawn
            "inner.sampler": "random",  # the GP's fit is what these tests do not test
            "inner.space": "gaps",  # GITS and LD3 are points of it (not of the density's)
            "inner.nfe_budgets": [NFE],
            "inner.fid_num_images": 64,
            "inner.batch_size": 64,
        },
    )
    # in memory: the tests read back what the runner stores, not SQLite's fsync
    storage = optuna.storages.InMemoryStorage()
    return make_context(config, storage=storage, progress=False, log=lambda _m: None)


@pytest.fixture(scope="module")
def D():
    return gmm2d_mixture()  # the toy data's exact denoiser


def _study(ctx, name):
    return optuna.load_study(study_name=name, storage=ctx.storage)


def test_peers_are_gits_and_ld3_of_the_model_scored_on_held_out_seeds_with_costs(ctx, D):
    record = inner.tune_steps(ctx, D, "scored/nfe-7", NFE)
    held = record.held_out
    assert held is not None
    for name in ("gits", "ld3"):
        assert len(held.scores[name]) == ctx.seeds.held_out_sets
        assert all(math.isfinite(v) and v >= 0 for v in held.scores[name])
        assert held.export()[name] == pytest.approx(held.mean(name))
        cost = record.costs[name]
        assert cost["denoiser_evaluations"] > 0 and cost["seconds"] > 0
        validate(record.schedules[name].sigmas)
        assert record.schedules[name].sampler == ctx.config.inner.samplers[0]
    # GITS's schedule is models.placement.gits for this model, sampler, NFE and sigma range
    direct = gits(D, ctx.shape, NFE, "heun", sigma_min=0.002, sigma_max=80.0, **TINY["gits"])
    assert record.schedules["gits"].sigmas == tuple(direct.sigmas.tolist())
    assert record.costs["gits"]["denoiser_evaluations"] == direct.denoiser_evaluations
    # LD3 starts from GITS, and its cost includes GITS's
    assert record.costs["ld3"]["denoiser_evaluations"] > direct.denoiser_evaluations
    stored = records.read_peers(_study(ctx, "scored/nfe-7"))
    assert stored["ld3"].info["start"] == "gits"
    assert stored["ld3"].info["init"] == list(direct.sigmas.tolist())
    # the stored record (what status, export and the dashboards read) carries them too
    again = InnerRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again.costs == record.costs and again.held_out.scores["gits"] == held.scores["gits"]


def test_peers_are_enqueued_as_starting_points_of_the_search(ctx, D):
    record = inner.tune_steps(ctx, D, "enqueued/nfe-7", NFE)
    trials = records.read_inner_trials(ctx.storage, "enqueued/nfe-7")
    started = {t.start: t for t in trials if t.start}
    for name in ("gits", "ld3"):
        sigmas = started[name].schedule.sigmas
        assert sigmas == pytest.approx(record.schedules[name].sigmas, rel=1e-9)
        assert record.search_baselines[name] == pytest.approx(started[name].fid)
    # the baselines come first, then the peers, before the other starting points
    order = [t.start for t in sorted(trials, key=lambda t: t.number) if t.start]
    assert order[:4] == ["karras_rho7", "loglinear", "gits", "ld3"]


def test_a_peer_outside_the_search_space_is_scored_but_not_enqueued(ctx, D, monkeypatch):
    n = steps_for_nfe("heun", NFE)
    squeezed = karras(n, 0.002, 80.0).tolist()
    squeezed[2] = squeezed[1] * 0.999  # a gap in lam far below 0.02 of the largest
    with pytest.raises(ValueError):
        spaces.schedule_params(squeezed, "heun", config=ctx.config, nfe=NFE)

    def fake(ctx_, D_, name, nfe, done):
        return Peer(Schedule("heun", tuple(squeezed)), {"denoiser_evaluations": 1.0}, {})

    monkeypatch.setattr(inner, "compute_peer", fake)
    record = inner.tune_steps(ctx, D, "outside/nfe-7", NFE)
    starts = {t.start for t in records.read_inner_trials(ctx.storage, "outside/nfe-7")}
    assert "gits" not in starts and "ld3" not in starts
    assert len(record.held_out.scores["gits"]) == ctx.seeds.held_out_sets


def test_peers_are_computed_once_and_reused_on_a_resume(ctx, D, monkeypatch):
    calls: list[tuple[str, bool]] = []
    real = inner.compute_schedule

    def counting(method, *args, start=None, **kwargs):
        calls.append((method, start is not None))
        return real(method, *args, start=start, **kwargs)

    monkeypatch.setattr(inner, "compute_schedule", counting)
    # a process died after storing GITS's schedule, before LD3's and before any trial
    study = optuna.create_study(study_name="resumed/nfe-7", storage=ctx.storage)
    records.init_inner_study(study, NFE)
    stored_gits = inner.compute_peer(ctx, D, "gits", NFE, {})
    records.write_peer(study, "gits", stored_gits)
    calls.clear()
    first = inner.tune_steps(ctx, D, "resumed/nfe-7", NFE)
    assert calls == [("ld3", True)]  # only LD3, started from the stored GITS schedule
    assert first.schedules["gits"] == stored_gits.schedule
    starts = [t.start for t in records.read_inner_trials(ctx.storage, "resumed/nfe-7")]
    assert "gits" in starts and "ld3" in starts  # enqueued on the resume: it had no trial

    calls.clear()
    again = inner.tune_steps(ctx, D, "resumed/nfe-7", NFE)
    assert calls == []  # nothing recomputed: the stored schedules are read back
    assert again.schedules["ld3"] == first.schedules["ld3"]
    assert again.costs == first.costs
    assert again.held_out == first.held_out  # the held-out figures are stored too


def test_no_peers_when_the_config_names_none(ctx, D):
    quiet = dataclasses.replace(ctx, config=ctx.config.replace(**{"inner.peers": []}))
    record = inner.tune_steps(quiet, D, "none/nfe-7", NFE)
    assert record.costs == {}
    assert not {"gits", "ld3"} & set(record.held_out.scores)
    assert records.read_peers(_study(ctx, "none/nfe-7")) == {}


def test_peers_config_field_checks_its_names():
    assert load_config("toy").inner.peers == ("gits", "ld3")
    assert load_config("toy", {"inner.peers": []}).inner.peers == ()
    with pytest.raises(ValueError, match=r"inner\.peers must be a list of distinct names"):
        load_config("toy", {"inner.peers": ["gits", "dpm_nonuniform"]})
    with pytest.raises(ValueError, match=r"inner\.peers"):
        load_config("toy", {"inner.peers": ["gits", "gits"]})


# ------------------------------------------------------------------------------ the density


def _record(nfe: int, sigmas) -> InnerRecord:
    tuned = Schedule("heun", tuple(float(s) for s in sigmas))
    return InnerRecord(nfe, f"x/nfe-{nfe}", 1.0, 0, {}, {"tuned": tuned}, {}, None)


def test_density_record_is_a_step_density_fitted_to_the_tuned_schedules():
    tuned = {k: karras(steps_for_nfe("heun", k), 0.01, 20.0, 5.0) for k in (5, 9, 15)}
    stored = schedules.density_record({k: _record(k, s) for k, s in tuned.items()})
    assert stored["sampler"] == "heun" and stored["nfe"] == [5, 9, 15]
    density = StepDensity.from_dict(stored)
    expected = StepDensity.fit(tuned)
    assert density.masses == pytest.approx(expected.masses)
    s = density.for_nfe("heun", 11)
    assert s.numel() == steps_for_nfe("heun", 11) + 1
    assert s[0].item() == pytest.approx(20.0) and s[-2].item() == pytest.approx(0.01)
    # the steps of karras rho=5 at an untuned count, within a tenth of a unit of lam
    lam = -2 * s[:-1].log()
    lam_karras = -2 * karras(6, 0.01, 20.0, 5.0)[:-1].log()
    assert (lam - lam_karras).abs().max().item() < 0.1 * (lam[-1] - lam[0]).item()
    assert schedules.density_record({}) is None


def test_density_schedule_interpolates_the_tuned_ranges_in_the_number_of_steps():
    ranges = {5: (0.1, 2.0), 15: (0.004, 40.0)}  # heun: 3 and 8 steps
    tuned = {k: karras(steps_for_nfe("heun", k), lo, hi, 7.0) for k, (lo, hi) in ranges.items()}
    stored = schedules.density_record({k: _record(k, s) for k, s in tuned.items()})
    assert stored["ranges"] == {"5": [0.1, 2.0], "15": [0.004, 40.0]}
    masses = StepDensity.fit(tuned).masses

    def ends(nfe):
        s = schedules.density_schedule(stored, nfe)
        assert s.numel() == steps_for_nfe("heun", nfe) + 1
        return s[-2].item(), s[0].item()

    assert ends(5) == pytest.approx((0.1, 2.0))
    assert ends(15) == pytest.approx((0.004, 40.0))
    assert ends(3) == pytest.approx((0.1, 2.0))  # beyond the tuned budgets: the nearest's ends
    assert ends(25) == pytest.approx((0.004, 40.0))
    # NFE 9: 5 steps, at t = ln(5/3) / ln(8/3) between them in ln sigma
    t = math.log(5 / 3) / math.log(8 / 3)
    lo, hi = 0.1 ** (1 - t) * 0.004**t, 2.0 ** (1 - t) * 40.0**t
    assert ends(9) == pytest.approx((lo, hi))
    expected = StepDensity(lo, hi, masses).schedule(5)
    assert torch.allclose(schedules.density_schedule(stored, 9), expected)


def _sampling_study_with_density(tmp_path):
    """A study of kind "sampling" with one trial whose inner records are karras schedules at
    NFE 5, 9 and 15 (written by records.add_sampling_trial, with their density)."""
    url = f"sqlite:///{tmp_path / 'density.db'}"
    config = load_config("toy", {"name": "dens", "storage": url, "inner.nfe_budgets": [5, 9, 15]})
    study = optuna.create_study(study_name="dens", storage=url)
    records.init_outer_study(study, config, kind="sampling", source="test")
    tuned = {k: _record(k, karras(steps_for_nfe("heun", k), 0.01, 20.0, 5.0)) for k in (5, 9, 15)}
    density = schedules.density_record(tuned)
    records.add_sampling_trial(study, tuned, density=density)
    return url, density


def test_export_at_an_untuned_nfe_gives_the_density_schedule(tmp_path):
    from sigmatune.study.commands.export import export
    from sigmatune.study.formats import load_schema

    jsonschema = pytest.importorskip("jsonschema")
    url, stored = _sampling_study_with_density(tmp_path)
    assert records.read_study(records_storage(url), "dens").trials[0].density == stored
    untuned = 7

    doc = json.loads(export(url, nfe=untuned).text)
    jsonschema.validate(doc, load_schema())
    section = doc["schedules"][str(untuned)]
    assert section["source"] == "density" and section["held_out"] is None
    sigmas = validate(section["sigmas"])
    assert sigmas.numel() == steps_for_nfe(stored["sampler"], untuned) + 1
    assert section["sigmas"] == schedules.density_schedule(stored, untuned).tolist()
    # a tuned budget is the tuned schedule, as before
    tuned_doc = json.loads(export(url, nfe=9).text)
    assert tuned_doc["schedules"]["9"]["source"] == "tuned"
    assert tuned_doc["schedules"]["9"]["sigmas"] == karras(5, 0.01, 20.0, 5.0).tolist()
    # the other formats say where it came from
    pt = tmp_path / "k.pt"
    export(url, nfe=untuned, fmt="k-diffusion", output=pt)
    payload = torch.load(pt, weights_only=True)
    assert payload["source"] == "density" and payload["sigmas"].tolist() == section["sigmas"]
    diffusers = json.loads(export(url, nfe=untuned, fmt="diffusers").text)
    assert diffusers["source"] == "density" and diffusers["sigmas"] == section["sigmas"]


def test_export_at_an_untuned_nfe_without_a_density_names_the_budgets(synthetic_study):
    from sigmatune.study.commands.export import export

    with pytest.raises(ValueError, match="no step density"):
        export(synthetic_study.url, nfe=7)


@pytest.mark.slow
def test_tune_sampling_stores_the_density_and_export_uses_it(tmp_path, monkeypatch):
    from sigmatune.study.commands.export import export
    from sigmatune.study.tune import tune_sampling

    monkeypatch.chdir(tmp_path)
    config = load_config(
        "toy",
        {
            "storage": f"sqlite:///{tmp_path / 's.db'}",
            "device": "cpu",
            "inner.inner_trials": 5,
            "inner.sampler": "random",
            "inner.nfe_budgets": [5, 9],
            "inner.fid_num_images": 64,
            "inner.batch_size": 64,
        },
    )
    summary = tune_sampling(
        config, denoiser=gmm2d_mixture(), progress=False, log=lambda _m: None, reference_steps=0
    )
    study = records.read_study(records_storage(config.storage), summary.prefix)
    density = study.trials[-1].density
    assert density is not None and density["nfe"] == [5, 9]
    doc = json.loads(export(config.storage, summary.prefix, nfe=7).text)
    assert doc["schedules"]["7"]["source"] == "density"
    validate(doc["schedules"]["7"]["sigmas"])


def records_storage(url: str):
    from sigmatune.study.storage import make_storage

    return make_storage(url, heartbeat_interval=None)
