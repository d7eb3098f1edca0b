"""The overhead and GPU benchmark scripts at tiny sizes: they run, and their JSON has the
figures the README quotes (with the machine they came from)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def check_machine(result: dict) -> None:
    machine = result["machine"]
    assert {"cpu", "cpu_count", "torch", "device", "python", "torch_threads"} <= set(machine)
    assert machine["torch"] == torch.__version__


@pytest.mark.parametrize("name", ["overhead", "gpu", "fid_overhead"])
def test_help_names_the_command_to_reproduce(name, capsys):
    with pytest.raises(SystemExit) as exc:
        load(name).main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"python benchmarks/{name}.py" in text and "--quick" in text and "--out" in text


def test_overhead_training_and_sampling_at_tiny_size(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    threads = torch.get_num_threads()
    args = ["--quick", "--presets", "toy", "--sections", "training,sampling", "--out", str(out)]
    returned = load("overhead").main(args)
    assert torch.get_num_threads() == threads  # left as it was
    result = json.loads(out.read_text())
    assert result["benchmark"] == "overhead" and result["presets"] == ["toy"]
    check_machine(result)
    (train,) = result["training"]
    assert train["preset"] == "toy" and train["steps"] >= 1
    assert train["ours_images_per_s"] > 0 and train["plain_images_per_s"] > 0
    assert train["ratio"] > 0 and train["met"] == (train["ratio"] <= 1.05)
    assert train["loss_relative_difference"] < 1e-5  # the plain loop trains the same loss
    (sample,) = result["sampling"]
    assert sample["sampler"] == "heun" and sample["nfe"] == 5
    assert sample["ratio"] > 0 and sample["first_call_ratio"] > 0 and sample["sampler_ratio"] > 0
    assert sample["max_abs_difference_sampler_vs_bare"] < 1e-3
    assert {t["what"].split(":")[0] for t in result["targets"]} == {
        "training toy",
        "sampling toy",
    }
    assert returned["training"][0]["ratio"] == train["ratio"]
    printed = capsys.readouterr().out
    assert "| toy |" in printed and "torch " + torch.__version__ in printed


def test_overhead_fid_and_optuna_at_tiny_size(tmp_path):
    out = tmp_path / "overhead.json"
    args = ["--quick", "--presets", "toy", "--sections", "optuna", "--no-wal", "--out", str(out)]
    load("overhead").main(args)
    result = json.loads(out.read_text())
    (fid,) = result["fid"]  # the optuna section needs the fid section's trial compute
    assert fid["score_seconds"] > 0 and fid["generate_seconds"] > 0
    (row,) = result["optuna"]
    assert row["finished_trials"] == row["inner_trials"] == 3
    assert row["trial_seconds"] >= row["compute_seconds"] > 0
    parts = row["sampler_seconds"] + row["storage_seconds"] + row["other_seconds"]
    assert parts == pytest.approx(row["overhead_seconds"], rel=1e-6, abs=1e-9)
    assert row["storage_seconds"] > 0 and 0 < row["overhead_fraction"] < 1
    assert "wal" not in row
    (target,) = result["targets"]
    assert target["what"].startswith("optuna toy") and target["target"] == 0.05


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_script_without_a_gpu_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "needs a CUDA GPU" in done.stdout
    assert not out.exists()


def test_gpu_script_code_path_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    args = ["--device", "cpu", "--preset", "digits", "--quick", "--no-compile", "--threads", "1"]
    load("gpu").main([*args, "--out", str(out)])
    assert torch.get_num_threads() == threads
    result = json.loads(out.read_text())
    check_machine(result)
    assert result["machine"]["device"] == "cpu"
    assert [r["what"] for r in result["training"]][:2] == [
        "step, float32, eager",
        "step, bf16, eager",
    ]
    assert all(r["images_per_s"] > 0 for r in result["training"] + result["sampling"])
    assert result["sampling"][0]["speedup_vs_float32_eager"] == 1.0
