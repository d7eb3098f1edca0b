"""Issue 15's items that were fixed before this suite, checked once more from the user's side:
the storage password never printed (item 6), the psycopg 3 hint (item 9), a tune-sampling
study that status, export, report and the dashboard read (item 10), k-diffusion files for
every NFE with their paths printed (item 12), and ``status`` on a killed run's trial
(item 14; the progress lines of a run in a log are checked in test_concurrency.py).
"""

from __future__ import annotations

import json
import sys
import urllib.request

import optuna
import pytest
import torch

from sigmatune.study import records
from sigmatune.study.commands.cli import main

from .conftest import one_paragraph, snapshot, tiny_toml  # noqa: TID252

PASSWORD = "s3cret-pw"
SERVER_URL = f"postgresql+psycopg://alice:{PASSWORD}@127.0.0.1:1/nothing"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------ item 6: the password


def test_the_storage_password_is_never_printed_by_a_failing_command(in_tmp, capsys):
    before = snapshot(in_tmp)
    for args in (
        ("run", "config.toml", "--no-progress", "--storage", SERVER_URL),
        ("status", SERVER_URL),
        ("export", "--storage", SERVER_URL),
        ("report", "--storage", SERVER_URL, "-o", "report.html"),
        ("dashboard", SERVER_URL),
    ):
        rc, out, err = _cli(capsys, *args)
        one_paragraph(rc, err)
        assert PASSWORD not in out + err, args
        assert "alice" in err, args  # the URL is named, without its password
    assert snapshot(in_tmp) == before


def test_the_report_and_export_never_show_the_stored_password(synthetic_study, tmp_path):
    """A study run on a server stores its URL in its config: the report's Configuration
    block and the JSON export show it redacted."""
    from sigmatune.study.commands.export import export
    from sigmatune.study.commands.report import export_report

    study = optuna.load_study(study_name=synthetic_study.name, storage=synthetic_study.storage)
    config = dict(study.user_attrs[records.CONFIG], storage=SERVER_URL)
    study.set_user_attr(records.CONFIG, config)
    html = export_report(synthetic_study.url, None, tmp_path / "report.html").read_text()
    doc = export(synthetic_study.url).document
    for text in (html, json.dumps(doc)):
        assert PASSWORD not in text
        assert "alice" in text and "127.0.0.1:1/nothing" in text


# ------------------------------------------------------------------ item 9: the driver hint


def test_a_missing_postgresql_driver_is_one_paragraph_naming_psycopg_3(in_tmp, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg fails
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    rc, out, err = _cli(capsys, "status", SERVER_URL.replace("+psycopg", ""))
    err = one_paragraph(rc, err)
    assert 'pip install "psycopg[binary]"' in err and "psycopg2" not in err
    assert PASSWORD not in out + err


# ------------------------------------------------------------------ item 12: every NFE


def test_kdiffusion_export_writes_every_nfe_and_prints_the_paths(
    synthetic_study, capsys, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _cli(
        capsys, "export", "--storage", synthetic_study.url, "--format", "k-diffusion"
    )
    assert rc == 0, err
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 2  # NFE 5 and 9, in the current folder
    for path in files:
        assert f"sigmatune: wrote {path.name}" in err
        assert path.name in out  # and in the snippet that loads it
        payload = torch.load(path, weights_only=True)
        assert payload["nfe"] in (5, 9) and float(payload["sigmas"][-1]) == 0.0
    assert {torch.load(p, weights_only=True)["nfe"] for p in files} == {5, 9}


# ------------------------------------------------------------------ item 10: tune-sampling


@pytest.mark.slow
def test_a_tune_sampling_study_is_read_by_status_export_report_and_dashboard(in_tmp, capsys):
    from sigmatune.dashboards import server as S
    from sigmatune.study.storage import open_storage

    (in_tmp / "config.toml").write_text(tiny_toml(inner__inner_trials="2"))
    rc, out, err = _cli(
        capsys,
        "tune-sampling",
        "config.toml",
        "--no-progress",
        "--reference-steps",
        "0",
        "--denoiser",
        "sigmatune.models.data:gmm2d_mixture",
    )
    assert rc == 0, err
    prefix = "tiny-sampling"
    rc, out, err = _cli(capsys, "status", "sqlite:///run.db", "--study-name", prefix)
    assert rc == 0 and "given model" in out and "(sampling)" in out, err
    rc, out, err = _cli(capsys, "export", prefix, "--storage", "sqlite:///run.db")
    assert rc == 0, err
    assert json.loads(out)["kind"] == "sampling"
    rc, out, err = _cli(capsys, "report", prefix, "--storage", "sqlite:///run.db", "-o", "r.html")
    assert rc == 0 and prefix in (in_tmp / "r.html").read_text(), err
    with S.start(open_storage("sqlite:///run.db")) as server:
        with urllib.request.urlopen(f"{server.base_url}/api/studies", timeout=30) as r:
            names = {s["study_name"] for s in json.loads(r.read())["study_summaries"]}
    assert {prefix, f"{prefix}/nfe-5"} <= names
