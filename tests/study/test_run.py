"""`sigmatune run` end to end, as a user runs it: in a subprocess, on a SQLite file, with
kills (SIGKILL) in the middle, two processes at once, a diverging trial and bad input.

Each test writes its own small config (a 2-D Gaussian mixture and a small MLP, as the toy
preset, with fewer images) so that a whole run takes seconds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sigmatune.study import records
from sigmatune.study.config import load_config
from sigmatune.study.optuna_adapter import count_finished

ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny"


def tiny_toml(**changes: str) -> str:
    """A small toy config as TOML; ``changes`` replace whole lines ``key = value``."""
    lines = {
        "name": f'"{NAME}"',
        "dataset": '"gmm2d"',
        "seed": "0",
        "sigma_min": "0.002",
        "sigma_max": "80.0",
        "storage": '"sqlite:///run.db"',
        "device": '"cpu"',
    }
    sections = {
        "network": {"name": '"mlp"', "params": "{ hidden = 64, depth = 2, emb_dim = 32 }"},
        "train": {
            "train_nimg": "16_384",
            "batch_size": "256",
            "lr": "2e-3",
            "ema_halflife_nimg": "2_000",
            "checkpoint_nimg": "4_096",
            "grad_clip": "1.0",
        },
        "outer": {"outer_trials": "2", "sampler": '"tpe"', "pruner": '"none"'},
        "inner": {
            "inner_trials": "5",
            "nfe_budgets": "[5]",
            "samplers": '["heun"]',
            "sampler": '"gp"',
            "tune_sigma_range": "true",
            "fid_num_images": "256",
            "fid_extractor": '"rff"',
            "batch_size": "256",
        },
    }
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (sections[section] if section else lines)[name] = value
    out = [f"{k} = {v}" for k, v in lines.items()]
    for section, items in sections.items():
        out.append(f"\n[{section}]")
        out += [f"{k} = {v}" for k, v in items.items()]
    return "\n".join(out) + "\n"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def sigmatune(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sigmatune.study.commands.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sigmatune.study.commands.cli", *args],
        cwd=cwd,
        env=_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


RUN = ("run", "config.toml", "--no-progress", "--heartbeat-interval", "1", "--grace-period", "2")


def load(tmp_path: Path, name: str = NAME) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'run.db'}")


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill point:\n{log.read_text()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"kill point not reached in {timeout} s:\n{log.read_text()}")
        time.sleep(0.05)


def trial0_checkpoints(tmp_path: Path) -> list[Path]:
    """The training checkpoints of outer trial 0 of a run in ``tmp_path``, oldest first."""
    return sorted((tmp_path / "run-artifacts" / "runs").glob("*/trial-0000/checkpoints/*.pt"))


def kill_after_first_checkpoint(tmp_path: Path, log: Path) -> list[Path]:
    """Start ``run`` in ``tmp_path``, SIGKILL it once trial 0 has written a checkpoint;
    returns the checkpoints it left."""
    proc = start(*RUN, cwd=tmp_path, log=log)
    wait_for(lambda: len(trial0_checkpoints(tmp_path)) >= 1, proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return trial0_checkpoints(tmp_path)


def _inner_complete(tmp_path: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'run.db'}")
    except KeyError:
        return []
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _db_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ a whole run


@pytest.mark.slow
def test_run_stores_outer_and_inner_studies_links_and_artifacts(tmp_path):
    (tmp_path / "config.toml").write_text(tiny_toml())
    out = sigmatune(*RUN, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    db = tmp_path / "run.db"
    assert [p.name for p in tmp_path.glob("*.db")] == ["run.db"]  # one SQLite file
    url = f"sqlite:///{db}"
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {NAME, f"{NAME}/trial-0000/nfe-5", f"{NAME}/trial-0001/nfe-5"}

    outer = load(tmp_path)
    assert outer.user_attrs[records.ROLE] == "outer"
    study = records.read_study(optuna.storages.RDBStorage(url), NAME)
    assert study.config.train.train_nimg == 16_384  # the full config is on the study
    assert study.floors["floor"] > 0 and study.floors["ceiling"] > study.floors["floor"]
    # the floors of as many images as a score, and the resolution, are stored with the study
    fl = study.floors
    assert fl["floor_num_images"] == study.seeds.num_images and fl["floor_method"] == "truth"
    assert fl["resolution"] == pytest.approx(1 + 2 * fl["floor_spread"] / fl["floor"])
    assert [t.state for t in study.trials] == ["COMPLETE"] * 2
    assert study.trials[0].name == "edm"
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path / "run-artifacts")
    for t in study.trials:
        record = t.inner[5]
        inner = optuna.load_study(study_name=record.study_name, storage=url)
        # links both ways
        assert inner.user_attrs[records.OUTER_STUDY] == NAME
        assert inner.user_attrs[records.OUTER_TRIAL] == t.number
        assert inner.user_attrs[records.ROLE] == "inner"
        done = inner.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert len(done) == 5
        fids = {x.number: x.user_attrs[records.FID] for x in done}
        starts = {
            x.user_attrs[records.START]: fids[x.number]
            for x in done
            if records.START in x.user_attrs
        }
        assert {"karras_rho7", "loglinear"} <= set(starts)
        # the search's best is the least FID on the search seeds, and no worse than the
        # starting points measured on the same model and images
        # (of everything the study scored: the trials, and peers scored beside them)
        assert record.search_fid == pytest.approx(
            min([*fids.values(), *record.search_baselines.values()])
        )
        assert record.search_fid <= min(starts.values())
        assert record.search_baselines["karras_rho7"] == pytest.approx(starts["karras_rho7"])
        # the trial's value is the held-out mean of the tuned schedule, with its fair baselines
        held = record.held_out
        assert t.value == pytest.approx(held.mean("tuned"))
        # the export contract: the fixed keys, plus one per peer method the config names
        # the export contract (issue 10), plus a key per peer method (issue 11: GITS, LD3)
        peers = study.config.inner.peers
        assert peers == ("gits", "ld3")  # the default
        # and the model's training density as steps on the tuned range (issue 18)
        assert set(held.export()) == set(records.EXPORT_HELD_OUT_KEYS) | set(peers) | {
            "training_density"
        }
        assert held.seeds[0] >= 256 and held.seeds[1:] == (256, 3)  # disjoint from the search
        assert len(held.scores["tuned"]) == 3
        assert record.schedules["karras_rho7_same_range"].sigma_range == pytest.approx(
            record.tuned.sigma_range
        )
        # the trained model is an artifact that loads back into a denoiser
        path = tmp_path / f"model-{t.number}.pt"
        optuna.artifacts.download_artifact(
            artifact_store=store, artifact_id=t.model_artifact, file_path=str(path)
        )
        from sigmatune.study.modelfile import load_model_file

        D, payload = load_model_file(path)
        assert payload["nimg"] >= 16_384
        x = torch.randn(4, 2)
        assert D(x, torch.full((4,), 1.0)).shape == (4, 2)
    # one block per finished outer trial, with the held-out figures and the fair baselines
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("trial ")]
    assert len(lines) == 2
    assert out.stdout.count("same range: karras") >= 2 and "floor" in out.stdout
    assert "best: trial" in out.stdout

    # the same command again: nothing to do, nothing repeated
    again = sigmatune(*RUN, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(load(tmp_path).trials) == 2


# --------------------------------------------------------------------------- faults: kills


@pytest.mark.slow
def test_killed_in_training_and_in_an_inner_study_the_same_command_finishes(tmp_path):
    toml = tiny_toml(
        train__train_nimg="131_072",
        train__checkpoint_nimg="16_384",
        network__params="{ hidden = 128, depth = 3, emb_dim = 64 }",
        outer__outer_trials="1",
        inner__inner_trials="10",
        inner__fid_num_images="1000",
        inner__batch_size="1000",
    )
    (tmp_path / "config.toml").write_text(toml)
    inner_name = f"{NAME}/trial-0000/nfe-5"

    # 1. kill while training: after the first checkpoint, before the last
    log = tmp_path / "first.log"
    saved = kill_after_first_checkpoint(tmp_path, log)
    saved_nimg = max(int(p.stem.split("-")[1]) for p in saved)
    assert 0 < saved_nimg < 131_072, "the kill was meant to land in the middle of training"
    assert _inner_complete(tmp_path, inner_name) == []

    # 2. the same command: it retries the trial from its checkpoint; kill it again once the
    #    inner study has finished some trials
    log = tmp_path / "second.log"
    proc = start(*RUN, cwd=tmp_path, log=log)
    wait_for(lambda: len(_inner_complete(tmp_path, inner_name)) >= 3, proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.value, t.params) for t in _inner_complete(tmp_path, inner_name)}
    assert 3 <= len(before) < 10, "the kill was meant to land in the middle of the inner study"

    # 3. the same command finishes the study
    out = sigmatune(*RUN, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    outer = load(tmp_path)
    trials = outer.get_trials(deepcopy=False)
    assert count_finished(trials) == 1
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1
    final = records.read_trial(done[0])
    assert final.original_trial == 0  # a retry of trial 0
    assert final.number >= 1
    # the retry resumed from a checkpoint: it trained fewer images than a fresh start
    assert final.train["resumed_from_nimg"] >= saved_nimg
    assert final.train["nimg_this_process"] < 131_072

    inner = optuna.load_study(study_name=inner_name, storage=f"sqlite:///{tmp_path / 'run.db'}")
    assert len({s.study_name for s in optuna.get_all_study_summaries(inner._storage)}) == 2
    after = inner.get_trials(deepcopy=False)
    complete = {t.number: (t.value, t.params) for t in after if t.state == TrialState.COMPLETE}
    fids = [t.user_attrs[records.FID] for t in after if t.state == TrialState.COMPLETE]
    # no completed inner trial lost or repeated, and the study went on where it stopped
    for number, (value, params) in before.items():
        assert complete[number] == (value, params)
    assert count_finished(after) == 10
    assert len(complete) >= 10 - sum(t.state == TrialState.FAIL for t in after)
    base = [t for t in after if records.START in t.user_attrs and t.state == TrialState.COMPLETE]
    assert {"karras_rho7", "loglinear"} <= {t.user_attrs[records.START] for t in base}
    assert final.inner[5].search_fid == pytest.approx(min(fids))
    assert final.value == pytest.approx(final.inner[5].held_out.mean("tuned"))


@pytest.mark.slow
def test_two_processes_on_one_sqlite_file_share_the_study(tmp_path):
    (tmp_path / "config.toml").write_text(tiny_toml(outer__outer_trials="3"))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start(*RUN, cwd=tmp_path, log=log) for log in logs]
    for p in procs:
        p.wait(timeout=600)
    texts = [log.read_text() for log in logs]
    for p, text in zip(procs, texts, strict=True):
        assert p.returncode == 0, text
        assert "database is locked" not in text
        assert "Traceback" not in text
    trials = load(tmp_path).get_trials(deepcopy=False)
    # Both processes may see 2 finished and none running and each start one: the budget is
    # met, and overshot by at most one trial per extra process (as with MaxTrialsCallback).
    assert count_finished(trials) in (3, 4)
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert sorted(t.user_attrs[records.ORIGINAL_TRIAL] for t in trials) == list(range(len(trials)))
    # both processes did some of the work (each prints the lines of the trials it ran)
    ran = [sum(ln.startswith("trial ") for ln in text.splitlines()) for text in texts]
    assert sum(ran) == len(trials) and min(ran) >= 1, texts
    for t in trials:
        inner = optuna.load_study(
            study_name=records.read_trial(t).inner[5].study_name,
            storage=f"sqlite:///{tmp_path / 'run.db'}",
        )
        assert count_finished(inner.get_trials(deepcopy=False)) == 5


@pytest.mark.slow
def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    # a learning rate of 1e4 without clipping sends the weights (and the loss) to inf/nan
    toml = tiny_toml(train__lr="1e4", train__grad_clip="0.0", outer__outer_trials="2")
    (tmp_path / "config.toml").write_text(toml)
    out = sigmatune(*RUN, cwd=tmp_path)
    assert "Traceback" not in out.stderr
    trials = load(tmp_path).get_trials(deepcopy=False)
    assert len(trials) == 2  # the first failure did not stop the study
    for t in trials:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["sigmatune:fail_reason"].startswith("NonFiniteLossError")
    assert out.returncode == 1  # no trial completed, said plainly
    assert "no outer trial completed" in out.stderr
    status = sigmatune("status", "sqlite:///run.db", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "NonFiniteLossError" in status.stdout


# ------------------------------------------------------------------------------ bad input


def _one_paragraph_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr.strip()
    assert "Traceback" not in err
    assert err.startswith("sigmatune: error:")
    assert "\n\n" not in err
    return err


@pytest.fixture(scope="module")
def finished_db(tmp_path_factory) -> Path:
    """A finished tiny study (1 outer trial) to point bad commands at."""
    d = tmp_path_factory.mktemp("finished")
    (d / "config.toml").write_text(tiny_toml(outer__outer_trials="1", inner__inner_trials="3"))
    out = sigmatune(*RUN, cwd=d)
    assert out.returncode == 0, out.stderr
    return d


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changes", "args", "expected"),
    [
        ({"inner__inner_trials": "-3"}, (), r"inner\.inner_trials"),
        ({"train__batch_sise": "256"}, (), r"train\.batch_sise"),  # unknown key
        ({"inner__fid_extractor": '"vgg"'}, (), r"fid_extractor"),
        ({}, ("--set", "outer.sampler=annealing"), r"outer\.sampler"),
        ({}, ("--nfe", "1"), r"nfe"),
    ],
)
def test_bad_config_is_one_paragraph_and_leaves_the_database_untouched(
    finished_db, tmp_path, changes, args, expected
):
    db = finished_db / "run.db"
    digest = _db_digest(db)
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_toml(storage=f'"sqlite:///{db}"', **changes))
    out = sigmatune("run", str(bad), "--no-progress", *args, cwd=finished_db)
    err = _one_paragraph_error(out)
    import re

    assert re.search(expected, err), err
    assert _db_digest(db) == digest


@pytest.mark.slow
def test_a_config_that_differs_from_the_stored_one_is_refused(finished_db):
    db = finished_db / "run.db"
    digest = _db_digest(db)
    out = sigmatune(
        "run", "config.toml", "--no-progress", "--set", "train.lr=0.01", cwd=finished_db
    )
    err = _one_paragraph_error(out)
    assert "train.lr" in err
    assert _db_digest(db) == digest


def test_unreachable_storage_is_one_paragraph(tmp_path):
    (tmp_path / "config.toml").write_text(tiny_toml())
    missing = tmp_path / "no" / "such" / "folder" / "x.db"
    for url in (f"sqlite:///{missing}", "postgresql://user@127.0.0.1:1/none"):
        out = sigmatune("run", "config.toml", "--no-progress", "--storage", url, cwd=tmp_path)
        err = _one_paragraph_error(out)
        assert url.split("://")[0] in err
    assert not missing.parent.exists()
    assert list(tmp_path.glob("*.db")) == []


def test_status_of_a_missing_database_is_one_paragraph_and_creates_nothing(tmp_path):
    out = sigmatune("status", "sqlite:///nothing.db", cwd=tmp_path)
    err = _one_paragraph_error(out)
    assert "nothing.db" in err
    assert not (tmp_path / "nothing.db").exists()


def test_missing_checkpoint_is_one_paragraph_and_creates_nothing(tmp_path):
    (tmp_path / "config.toml").write_text(tiny_toml())
    out = sigmatune(
        "tune-sampling", "config.toml", "--checkpoint", "nope.pt", "--no-progress", cwd=tmp_path
    )
    err = _one_paragraph_error(out)
    assert "nope.pt" in err
    assert list(tmp_path.glob("*.db")) == []


def test_tiny_config_is_valid(tmp_path):
    """The config the tests above write is itself a valid one (so failures there are theirs)."""
    (tmp_path / "config.toml").write_text(tiny_toml())
    config = load_config(tmp_path / "config.toml")
    assert config.inner.nfe_budgets == (5,)
    assert load_config("toy").dataset == config.dataset


# ----------------------------------------------------------------- tune-sampling, analytic


@pytest.mark.slow
def test_tune_sampling_closes_the_gap_on_the_exact_gaussian_mixture_denoiser(tmp_path):
    """The toy data set's own mixture, given as module:function, at NFE 5 with Heun: the
    tuned schedule closes >= 90% of the gap between karras rho = 7 and a 256-step reference,
    in the study's score and in sliced Wasserstein distance to true samples on fresh seeds."""
    out = sigmatune(
        "tune-sampling",
        "--preset",
        "toy",
        "--denoiser",
        "sigmatune.models.data:gmm2d_mixture",
        "--nfe",
        "5",
        "--sampler",
        "heun",
        "--storage",
        "sqlite:///tune.db",
        "--no-progress",
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "closed" in out.stdout and "sliced Wasserstein" in out.stdout  # all printed
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'tune.db'}")
    study = records.read_study(storage, "toy-sampling")
    assert study.kind == "sampling"
    (trial,) = study.trials
    gaps = trial.gaps[5]
    assert gaps["reference_steps"] == 256
    score, sw = gaps["score"], gaps["sliced_wasserstein"]
    # the stored figures are what the formula gives on the stored (held-out) scores
    assert score["gap_closed"] == pytest.approx(
        (score["karras_rho7"] - score["tuned"]) / (score["karras_rho7"] - score["reference"])
    )
    assert score["tuned"] == pytest.approx(trial.inner[5].held_out.mean("tuned"))
    assert score["gap_closed"] >= 0.9, out.stdout
    assert sw["gap_closed"] >= 0.9, out.stdout
    # the reference is near the noise floor of the distance, karras far from it
    assert sw["reference"] < 3 * sw["true_vs_true"] < sw["karras_rho7"]
    # status and export read it like any study
    status = sigmatune("status", "--storage", "sqlite:///tune.db", cwd=tmp_path)
    assert status.returncode == 0 and "given model" in status.stdout, status.stderr
    exported = sigmatune("export", "--storage", "sqlite:///tune.db", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert '"held_out"' in exported.stdout


def test_a_running_trial_that_never_beat_is_failed_and_retried(tmp_path, monkeypatch):
    """A process killed inside ``study.ask()`` (before Optuna's first heartbeat) leaves a
    RUNNING trial with no heartbeat; ``fail_orphans`` fails it once it is old enough, and the
    retry callback enqueues its retry, while a trial with a heartbeat is left alone."""
    from sigmatune.study import optuna_adapter as adapter
    from sigmatune.study.storage import make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="o")
    orphan = study.ask()  # RUNNING, no heartbeat recorded
    beating = study.ask()
    storage.record_heartbeat(beating._trial_id)
    assert adapter.fail_orphans(study) == []  # too young
    monkeypatch.setattr(adapter, "ORPHAN_GRACE_FACTOR", 0)
    time.sleep(0.01)
    assert adapter.fail_orphans(study) == [orphan.number]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[orphan.number] == TrialState.FAIL
    assert states[beating.number] == TrialState.RUNNING
    retries = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert [t.system_attrs["failed_trial"] for t in retries] == [orphan.number]
