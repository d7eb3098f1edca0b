"""benchmarks/gpu.py: without a GPU it says so and exits 0; its code path runs on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu
from benchmarks._common import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "needs a CUDA GPU" in done.stdout
    assert not out.exists()


@pytest.mark.slow
def test_code_path_on_cpu(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    args = ["--device", "cpu", "--preset", "digits", "--quick", "--no-compile", "--threads", "1"]
    gpu.main([*args, "--out", str(out)])
    assert torch.get_num_threads() == threads
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"] == torch.__version__
    assert [r["what"] for r in result["training"]] == [
        "step, float32, eager",
        "step, bf16, eager",
        "models.training.train (bf16 autocast on CUDA), eager",
    ]
    assert all(r["images_per_s"] > 0 for r in result["training"] + result["sampling"])
    assert result["sampling"][0]["speedup_vs_float32_eager"] == 1.0
