"""benchmarks/quality_analytic.py: a tiny run writes the table as JSON with gap-closed figures
that follow (baseline - tuned) / (baseline - reference)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality_analytic.py"


@pytest.fixture(scope="module")
def qa():
    spec = importlib.util.spec_from_file_location("quality_analytic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("quality_analytic", module)
    spec.loader.exec_module(module)
    return module


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_gap_closed_formula(qa) -> None:
    assert qa.gap_closed(1.0, 0.25, 0.0) == pytest.approx(0.75)
    assert qa.gap_closed(2.0, 2.0, 1.0) == 0.0
    assert qa.gap_closed(2.0, 0.5, 1.0) == pytest.approx(1.5)  # better than the reference
    assert math.isnan(qa.gap_closed(1.0, 0.5, 1.0))  # no gap to close


def test_sliced_w2_of_a_shift(qa) -> None:
    """Shifting a cloud by c moves every projection by c.theta: SW2^2 = mean (c.theta)^2."""
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    directions = qa.unit_directions(3, 64, seed=1)
    y_proj = ((x + c) @ directions).sort(dim=0).values
    expected = float(((c @ directions) ** 2).mean().sqrt())
    assert qa.sliced_w2(x, y_proj, directions) == pytest.approx(expected, rel=1e-12)


def test_quick_run_writes_json(qa, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "qa.json"
    threads = torch.get_num_threads()
    assert qa.main(["--quick", "--nfe", "5", "--nfe-gmm64", "5", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # restored
    printed = capsys.readouterr().out
    assert "| mixture | sampler | NFE |" in printed
    assert "target (ring, heun, NFE 5" in printed

    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "quality_analytic"
    assert {"torch", "device", "cpu"} <= set(payload["machine"])
    assert payload["settings"]["quick"] is True
    assert payload["settings"]["trials"] == 4
    assert set(payload["mixtures"]) == {"ring", "gmm64"}
    for mixture in payload["mixtures"].values():
        assert {"sw", "mmd2"} <= set(mixture["true_vs_true"])
        assert mixture["reference"]["heun"]["steps"] == 32
    rows = payload["rows"]
    assert [(r["mixture"], r["sampler"], r["nfe"]) for r in rows] == [
        ("ring", "heun", 5),
        ("gmm64", "heun", 5),
    ]
    for r in rows:
        assert r["steps"] == 3 and r["nfe_used"] == 5
        for metric in ("sw", "mmd2"):
            values = r[metric]
            assert set(values) == {"karras", "loglinear", "tuned", "reference"}
            assert all(math.isfinite(v) for v in values.values())
            for baseline in ("karras", "loglinear"):
                expected = (values[baseline] - values["tuned"]) / (
                    values[baseline] - values["reference"]
                )
                assert _same(r["gap_closed"][f"{metric}_vs_{baseline}"], expected)
        sigmas = r["tuned_sigmas"]
        assert len(sigmas) == 4 and sigmas[-1] == 0.0
        assert r["study"]["complete_trials"] == 4
        assert set(r["study"]["fid"]) == {"karras", "loglinear", "tuned"}
    target = payload["target"]
    assert target["gap_closed"] == rows[0]["gap_closed"]["sw_vs_karras"]
    assert target["met"] == (target["gap_closed"] >= 0.9)
    assert payload["table"] in printed
