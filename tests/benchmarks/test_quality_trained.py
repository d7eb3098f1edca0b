"""benchmarks/quality_trained.py and benchmarks/digits_model.py: the independent raw-pixel
Fréchet distance against closed forms; a tiny end-to-end run (a model of 2,048 images, cached
and found again) writes held-out rows, the target and a README block re-rendered from the
JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import digits_model
from benchmarks import quality_trained as qt
from benchmarks._common import README_KEY


def test_raw_frechet_of_gaussians() -> None:
    """Same set: 0. A shift by c: |c|^2 (the covariances are equal)."""
    x = np.random.default_rng(0).standard_normal((500, 4))
    c = np.array([0.5, -1.0, 0.0, 2.0])
    assert qt.raw_frechet(x, x) == pytest.approx(0.0, abs=1e-8)
    assert qt.raw_frechet(x + c, x) == pytest.approx(float(c @ c), rel=1e-8)
    x[:, 2] = -1.0  # a constant pixel (a digit's border): a singular covariance
    c[2] = 0.0
    assert qt.raw_frechet(x + c, x) == pytest.approx(float(c @ c), rel=1e-6)


def test_cached_models_are_found_by_their_images(tmp_path) -> None:
    for nimg in (2048, 400_128):
        digits_model.model_path(tmp_path, nimg).write_bytes(b"")
    (tmp_path / "model-x.pt").write_bytes(b"")
    assert list(digits_model.cached_models(tmp_path)) == [2048, 400_128]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run(tmp_path) -> None:
    out = tmp_path / "qt.json"
    cache, work = tmp_path / "models", tmp_path / "work"
    args = ["--quick", "--check-sets", "1", "--cache", str(cache), "--work", str(work)]
    args += ["--out", str(out)]
    returned = qt.main(args)
    payload = json.loads(out.read_text())
    d = payload["digits"]
    assert d["model"]["train_nimg"] == 2048 and (cache / "model-000002048.pt").is_file()
    assert d["seeds"]["held_out_sets"] == 3 and d["floors"]["ceiling"] > d["floors"]["floor"]
    assert len(d["reference_fid"]["values"]) == 3
    assert d["reference_over_floor"] == pytest.approx(
        d["reference_fid"]["mean"] / d["floors"]["floor"]
    )
    (row,) = d["rows"]
    assert row["nfe"] == 5 and row["range_ratio"] in (None, pytest.approx(1.0))  # range fixed
    assert d["target"]["measured"] is False and d["target"]["met"] is None  # NFE 9 not run
    assert d["target"]["verdict"] == "not measured"
    check = d["independent_check"]["raw_frechet"]
    assert set(check) == {"5"} and set(check["5"]) == {"tuned", "karras_rho7_same_range"}
    assert d["independent_check"]["real_vs_real"]["mean"] > 0
    assert qt.render_readme(payload) == payload[README_KEY] == returned[README_KEY]
    # a second run finds the model in the cache and the studies in the storage
    again = qt.main([*args, "--no-check"])
    assert again["digits"]["model"]["train_nimg"] == 2048
    assert again["digits"]["rows"][0]["fid"]["tuned"]["mean"] == row["fid"]["tuned"]["mean"]
