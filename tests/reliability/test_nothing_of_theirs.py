"""Nothing of anyone else's written (issue 23, items 1, 2, 4 and 5): an export never replaces
the study's database or another program's file, and creates no folder; a SQLite file or
journal of another program is byte for byte unchanged after every command that reads a
study, and refused by ``run``; NFE budgets that a setting bounds are refused before anything
is created.

Most cases call ``sigmatune.study.commands.cli.main`` in this process, as test_bad_inputs.py does.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from sigmatune.study.commands.cli import main

from .conftest import RUN, one_paragraph, sigmatune, snapshot, tiny_toml  # noqa: TID252


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------ export's output


EXPORTS = {  # format -> the file name it is asked to write
    "json": "out.json",
    "csv": "out.csv",
    "diffusers": "out.json",
    "k-diffusion": "out.pt",
}


def _export(capsys, url: str, fmt: str, output: Path) -> tuple[int, str]:
    return _cli(
        capsys, "export", "--storage", url, "--format", fmt, "--nfe", "5", "-o", str(output)
    )


@pytest.mark.parametrize("fmt", list(EXPORTS))
def test_export_over_the_study_database_is_refused_and_the_database_stays(
    synthetic_study, capsys, fmt
):
    folder = synthetic_study.path.parent
    before = snapshot(folder)
    rc, err = _export(capsys, synthetic_study.url, fmt, synthetic_study.path)
    err = one_paragraph(rc, err)
    assert "SQLite database" in err and "will not replace it" in err, err
    assert snapshot(folder) == before
    assert main(["status", "--storage", synthetic_study.url]) == 0  # still a database


def _foreign_files(folder: Path) -> dict[str, Path]:
    """Files of other programs that an export's -o could name by mistake."""
    files = {
        "notes.json": '{"customers": [1, 2, 3]}\n',
        "table.csv": "id,name\n1,a\n",
        "readme.txt": "my notes\n",
        "page.html": "<html><body>mine</body></html>\n",
    }
    out = {}
    for name, text in files.items():
        (folder / name).write_text(text)
        out[name] = folder / name
    out["weights.pt"] = folder / "weights.pt"
    torch.save({"w": torch.ones(3)}, out["weights.pt"])
    return out


def test_export_and_report_never_replace_another_programs_file(synthetic_study, tmp_path, capsys):
    files = _foreign_files(tmp_path)
    before = snapshot(tmp_path)
    for path in files.values():
        for fmt in EXPORTS:
            rc, err = _export(capsys, synthetic_study.url, fmt, path)
            assert "not a file that sigmatune wrote" in one_paragraph(rc, err), (path, fmt)
        rc, err = _cli(capsys, "report", "--storage", synthetic_study.url, "-o", str(path))
        assert "not a file that sigmatune wrote" in one_paragraph(rc, err), path
    assert snapshot(tmp_path) == before


def test_export_replaces_its_own_files_in_any_format(synthetic_study, tmp_path, capsys):
    """What sigmatune wrote before (an export of any format, a report) is replaced."""
    for fmt, name in EXPORTS.items():
        out = tmp_path / name
        assert _export(capsys, synthetic_study.url, fmt, out)[0] == 0, fmt
        assert _export(capsys, synthetic_study.url, fmt, out)[0] == 0, fmt  # its own: replaced
    json_out = tmp_path / "out.json"
    assert json.loads(json_out.read_text())["scheduler"] == "EulerDiscreteScheduler"  # diffusers
    assert _export(capsys, synthetic_study.url, "json", json_out)[0] == 0  # diffusers -> json
    assert json.loads(json_out.read_text())["format"] == "sigmatune-export"
    report = tmp_path / "r.html"
    assert main(["report", "--storage", synthetic_study.url, "-o", str(report)]) == 0
    assert main(["report", "--storage", synthetic_study.url, "-o", str(report)]) == 0


@pytest.mark.parametrize("fmt", list(EXPORTS))
def test_export_into_a_folder_that_does_not_exist_creates_nothing(
    synthetic_study, tmp_path, capsys, fmt
):
    before = snapshot(tmp_path)
    out = tmp_path / "no" / "such" / EXPORTS[fmt]
    rc, err = _export(capsys, synthetic_study.url, fmt, out)
    err = one_paragraph(rc, err)
    assert "does not exist" in err and str(out.parent) in err, err
    assert snapshot(tmp_path) == before  # no folder made
    # the same rule as report's
    rc, err = _cli(capsys, "report", "--storage", synthetic_study.url, "-o", str(out) + ".html")
    assert "does not exist" in one_paragraph(rc, err)
    assert snapshot(tmp_path) == before


def test_k_diffusion_files_per_nfe_need_an_existing_folder(synthetic_study, tmp_path, capsys):
    before = snapshot(tmp_path)
    rc, err = _cli(
        capsys, "export", "--storage", synthetic_study.url, "--format", "k-diffusion", "-o",
        str(tmp_path / "kd"),
    )  # fmt: skip
    assert "does not exist" in one_paragraph(rc, err)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ another program's database


def _customers_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada'), ('grace')")
    conn.commit()
    conn.close()
    return path


READERS = {
    "status": lambda url, out: ["status", url],
    "status-json": lambda url, out: ["status", url, "--format", "json"],
    "export": lambda url, out: ["export", "--storage", url],
    "export-file": lambda url, out: ["export", "--storage", url, "-o", str(out / "e.json")],
    "report": lambda url, out: ["report", "--storage", url, "-o", str(out / "r.html")],
}


@pytest.mark.parametrize("form", ["path", "sqlite-url"])
@pytest.mark.parametrize("command", list(READERS))
def test_reading_commands_leave_another_programs_sqlite_file_unchanged(
    tmp_path, capsys, command, form
):
    db = _customers_db(tmp_path / "app.db")
    url = str(db) if form == "path" else f"sqlite:///{db}"
    before = snapshot(tmp_path)
    rc, err = _cli(capsys, *READERS[command](url, tmp_path))
    err = one_paragraph(rc, err)
    assert "another program's tables (customers)" in err, err
    assert snapshot(tmp_path) == before  # byte for byte, and nothing beside it


def test_the_dashboard_leaves_another_programs_sqlite_file_unchanged(tmp_path, capsys):
    db = _customers_db(tmp_path / "app.db")
    before = snapshot(tmp_path)
    rc, err = _cli(capsys, "dashboard", str(db))
    assert "another program's tables" in one_paragraph(rc, err)
    assert snapshot(tmp_path) == before


def test_reading_commands_do_not_turn_an_empty_file_into_a_database(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    empty.touch()
    before = snapshot(tmp_path)
    for command in READERS.values():
        rc, err = _cli(capsys, *command(str(empty), tmp_path))
        assert "holds no study" in one_paragraph(rc, err)
    assert snapshot(tmp_path) == before
    assert empty.stat().st_size == 0


def test_a_file_that_is_not_sqlite_or_a_journal_is_refused_unchanged(tmp_path, capsys):
    (tmp_path / "notes.db").write_text("not a database at all\n")
    (tmp_path / "server.log").write_text("2026-12-01 started\n2026-12-02 stopped\n")
    before = snapshot(tmp_path)
    for name, what in (("notes.db", "not a SQLite database"), ("server.log", "not an Optuna")):
        for command in READERS.values():
            rc, err = _cli(capsys, *command(str(tmp_path / name), tmp_path))
            assert what in one_paragraph(rc, err), (name, err)
    assert snapshot(tmp_path) == before


def test_run_refuses_another_programs_database_and_creates_nothing(in_tmp, capsys):
    _customers_db(in_tmp / "app.db")
    (in_tmp / "server.log").write_text("2026-12-01 started\n")
    before = snapshot(in_tmp)
    for storage, what in (("app.db", "another program's tables"), ("server.log", "journal")):
        rc, err = _cli(capsys, "run", "config.toml", "--no-progress", "--storage", storage)
        assert what in one_paragraph(rc, err)
        assert snapshot(in_tmp) == before  # no artifact folder, no study in the file


def test_a_reader_does_not_change_a_study_database(synthetic_study, tmp_path, capsys):
    """A study's database: status, export and report leave it byte for byte (they read
    through Optuna, which must not write either)."""
    import shutil

    folder = tmp_path / "copy"
    folder.mkdir()
    db = folder / "synth.db"
    shutil.copy(synthetic_study.path, db)
    before = snapshot(folder)
    for args in (
        ["status", str(db)],
        ["status", str(db), "--format", "json"],
        ["export", "--storage", str(db)],
        ["report", "--storage", str(db), "-o", str(tmp_path / "r.html")],
    ):
        assert main(args) == 0, capsys.readouterr().err
    assert snapshot(folder) == before


def test_the_dashboard_serves_a_study_without_changing_its_database(
    synthetic_study, tmp_path, monkeypatch
):
    """The dashboard command opens the storage for reading only (the server itself is not
    started here: ``serve`` is replaced by a function that records its storage)."""
    import shutil

    from sigmatune.dashboards import server

    db = tmp_path / "copy.db"
    shutil.copy(synthetic_study.path, db)
    before = db.read_bytes()
    seen = {}

    def fake_serve(storage, **kwargs):
        seen["studies"] = [s.study_name for s in storage.get_all_studies()]

    monkeypatch.setattr(server, "serve", fake_serve)
    assert main(["dashboard", str(db)]) == 0
    assert seen["studies"]
    assert db.read_bytes() == before


# ------------------------------------------------------------------ NFE budgets


@pytest.mark.parametrize(
    "changes, nfe, what",
    [
        ({}, "10000000", "inner.peers"),
        ({}, "65", "inner.peers"),  # heun: 33 steps > GITS's 32-point teacher grid
        (
            {"inner__peers": "[]", "outer__pruner": '"median"', "outer__interim": '"gits"'},
            "65",
            "outer.pruner",
        ),
    ],
    ids=["ten-million", "just-over-the-grid", "interim-score"],
)
def test_nfe_budgets_over_a_bound_are_refused_before_anything_is_created(
    in_tmp, capsys, changes, nfe, what
):
    (in_tmp / "config.toml").write_text(tiny_toml(**changes))
    before = snapshot(in_tmp)
    rc, err = _cli(capsys, "run", "config.toml", "--no-progress", "--nfe", nfe)
    err = one_paragraph(rc, err)
    assert what in err and "at most NFE 63" in err, err
    assert snapshot(in_tmp) == before  # no database, no artifacts, no model trained


def test_the_largest_nfe_the_bounds_allow_is_accepted():
    from sigmatune.study.config import load_config

    config = load_config("toy", {"inner.nfe_budgets": [5, 63]})
    assert config.inner.nfe_budgets == (5, 63)
    none = load_config(
        "toy", {"inner.nfe_budgets": [101], "inner.peers": [], "outer.pruner": "none"}
    )
    assert none.inner.nfe_budgets == (101,)  # nothing bounds it then


# ------------------------------------------------------------------ the tiny run, end to end


@pytest.mark.slow
def test_run_with_an_nfe_too_large_writes_nothing_from_the_command_line(tmp_path):
    (tmp_path / "config.toml").write_text(tiny_toml())
    before = snapshot(tmp_path)
    out = sigmatune(*RUN, "--nfe", "10000000", cwd=tmp_path)
    one_paragraph(out.returncode, out.stderr)
    assert snapshot(tmp_path) == before
