"""Several processes and several studies on one storage (issue 15, items 1 and 2): three
``sigmatune run`` processes draw different outer configurations; two names that read alike
once made safe for a file system never share checkpoints or exports; a new database with an
old study name never resumes the old study's checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sigmatune.study import records
from sigmatune.study.optuna_adapter import count_finished

from .conftest import RUN, sigmatune, snapshot, start, tiny_toml  # noqa: TID252


def _studies(folder: Path, db: str = "run.db") -> dict[str, optuna.Study]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / db}")
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
        for s in optuna.get_all_study_summaries(storage)
    }


def _run_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "run-artifacts" / "runs").iterdir() if p.is_dir())


def _run_key(run_dir: Path) -> str:
    (ckpt,) = (run_dir / "trial-0000" / "checkpoints").glob("*.pt")
    return torch.load(ckpt, map_location="cpu", weights_only=True)["run_key"]


@pytest.mark.slow
def test_three_processes_on_one_sqlite_file_draw_different_outer_configurations(tmp_path):
    """Nothing enqueued (no EDM, no literature): every outer trial is the sampler's, and the
    sampler is reseeded per trial number, so no two processes draw the same point."""
    (tmp_path / "config.toml").write_text(
        tiny_toml(
            outer__outer_trials="3",
            outer__enqueue_baseline="false",
            outer__literature="[]",
            inner__inner_trials="2",
        )
    )
    logs = [tmp_path / f"{i}.log" for i in range(3)]
    procs = [start(*RUN, cwd=tmp_path, log=log) for log in logs]  # together, as in the issue
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=600) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    (outer,) = [s for name, s in _studies(tmp_path).items() if "/" not in name]
    trials = outer.get_trials(deepcopy=False)
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert 3 <= count_finished(trials) <= 5  # Optuna's overshoot: one per extra process
    drawn = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(drawn)) == len(drawn), drawn
    assert not any(t.user_attrs.get(records.NAME) for t in trials)  # none was enqueued
    ran = [sum(ln.startswith("trial ") for ln in log.read_text().splitlines()) for log in logs]
    assert sum(ran) == len(trials) and sum(r > 0 for r in ran) >= 2, ran


@pytest.mark.slow
def test_names_that_read_alike_never_share_checkpoints_or_exports(tmp_path):
    """'exp a' and 'exp_a' are both 'exp_a' once made safe for a file name: two processes
    at once, one storage, and each study keeps its own folder, checkpoints and exports."""
    (tmp_path / "config.toml").write_text(
        tiny_toml(outer__outer_trials="1", inner__inner_trials="2")
    )
    names = ["exp a", "exp_a"]
    logs = [tmp_path / f"{i}.log" for i in range(2)]
    procs = [
        start(*RUN, "--study-name", name, cwd=tmp_path, log=log)
        for name, log in zip(names, logs, strict=True)
    ]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=600) == 0, log.read_text()
    studies = _studies(tmp_path)
    dirs = _run_dirs(tmp_path)
    assert len(dirs) == 2
    uids = {name: records.study_uid(studies[name]) for name in names}
    for name in names:  # each folder is named by its study's unique id
        (mine,) = [d for d in dirs if d.name.endswith(uids[name][:12])]
        assert (mine / "trial-0000" / "model.pt").is_file()
        (trial,) = studies[name].get_trials(deepcopy=False)
        train = records.read_trial(trial).train
        assert train["resumed_from_nimg"] == 0 and train["nimg_this_process"] == 16_384
    assert _run_key(dirs[0]) != _run_key(dirs[1])

    attached = {name: studies[name].user_attrs[records.EXPORT]["paths"] for name in names}
    for name, log in zip(names, logs, strict=True):  # run says where its export went
        assert all(p in log.read_text() for p in attached[name].values()), log.read_text()
    paths = [tmp_path / p for name in names for p in attached[name].values()]
    assert len(set(paths)) == 4 and all(p.is_file() for p in paths)
    for name in names:
        doc = json.loads((tmp_path / attached[name]["json"]).read_text())
        assert doc["study"] == name

    out_dir = tmp_path / "exports"  # both studies' k-diffusion files into one folder
    out_dir.mkdir()
    for name in names:
        out = sigmatune(
            "export",
            name,
            "--storage",
            "sqlite:///run.db",
            "--format",
            "k-diffusion",
            "-o",
            str(out_dir),
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
    files = sorted(out_dir.glob("*.pt"))
    assert len(files) == 2  # one NFE each: the second export did not replace the first
    assert {torch.load(p, weights_only=True)["study"] for p in files} == set(names)


@pytest.mark.slow
def test_a_new_database_with_an_old_name_never_resumes_the_old_checkpoints(tmp_path):
    """The old study finished (its trial's checkpoint at the full budget); its database is
    deleted and the same name run with another learning rate: the new trial trains every
    image itself and the old folder is left exactly as it was."""
    (tmp_path / "config.toml").write_text(
        tiny_toml(outer__outer_trials="1", inner__inner_trials="2")
    )
    out = sigmatune(*RUN, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (old,) = _run_dirs(tmp_path)
    old_files = snapshot(old)
    assert any(p.endswith(".pt") and "/checkpoints/" in p for p in old_files)

    (tmp_path / "run.db").unlink()
    with_progress = [a for a in RUN if a != "--no-progress"]
    out = sigmatune(*with_progress, "--set", "train.lr=0.01", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # progress into a pipe (issue 15 item 14): a few plain lines, no bar redrawn with \r
    log = out.stdout + out.stderr
    assert "\r" not in log and len(log) < 16_000, len(log)
    assert "16,384/16,384 img (100%)" in log
    (new,) = [d for d in _run_dirs(tmp_path) if d != old]
    assert snapshot(old) == old_files  # untouched: not resumed, not moved, not overwritten
    (study,) = [s for name, s in _studies(tmp_path).items() if "/" not in name]
    (trial,) = study.get_trials(deepcopy=False)
    train = records.read_trial(trial).train
    assert train["resumed_from_nimg"] == 0
    assert train["nimg_this_process"] == 16_384 > 0
    assert records.stored_config(study).train.lr == 0.01
    assert _run_key(new) != _run_key(old)
