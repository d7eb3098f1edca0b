"""benchmarks/overhead at tiny sizes: each measured thing runs, its typed row holds the figures
the README block prints, and the block is re-rendered from the JSON alone."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks._common import README_KEY, interleaved, paired_ratio
from benchmarks.overhead import __main__ as runner
from benchmarks.overhead.sampling import bare_sample
from benchmarks.overhead.setup import load_setup
from benchmarks.overhead.training import edm_loss_inline, loss_agreement


def check_machine(result: dict) -> None:
    machine = result["machine"]
    assert {"cpu", "cpu_count", "torch", "device", "python", "torch_threads"} <= set(machine)
    assert machine["torch"] == torch.__version__


def test_help_names_the_command(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "python -m benchmarks.overhead" in text and "--quick" in text and "--out" in text


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    assert paired_ratio([2.0, 3.0, 10.0], [1.0, 1.0, 1.0]) == 3.0
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert [len(v) for v in times.values()] == [3, 3]


def test_plain_loop_trains_the_objective_of_train() -> None:
    setup = load_setup("toy")
    assert loss_agreement(setup, setup.objective()) < 1e-5
    # the inline loss is EDM's: at sigma = sigma_data, weight 2 / sigma_data^2
    y = torch.zeros(4, 2)
    sigma = torch.full((4,), setup.sigma_data)

    def net(x, c_noise):
        return torch.zeros_like(x)

    noise = torch.ones(4, 2)
    expected = 2 / setup.sigma_data**2 * (0.5 * setup.sigma_data) ** 2  # D = c_skip x = x / 2
    assert float(edm_loss_inline(net, y, sigma, noise, setup.sigma_data)) == pytest.approx(expected)


def test_bare_heun_matches_the_product_heun() -> None:
    from sigmatune.models.samplers import heun
    from sigmatune.models.schedules import karras

    setup = load_setup("toy")
    D = setup.denoiser()
    sigmas = karras(3, 0.002, 80.0, 7.0)
    x = 80.0 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = heun(D, x, sigmas)
        bare = bare_sample(D.net, x, sigmas.tolist(), setup.sigma_data, "heun")
    assert torch.allclose(ours, bare, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_training_and_sampling_at_tiny_size(tmp_path, capsys) -> None:
    out = tmp_path / "overhead.json"
    threads = torch.get_num_threads()
    returned = runner.main(
        ["--quick", "--presets", "toy", "--only", "training,sampling", "--out", str(out)]
    )
    assert torch.get_num_threads() == threads  # left as it was
    result = json.loads(out.read_text())
    assert result["benchmark"] == "overhead" and result["presets"] == ["toy"]
    check_machine(result)
    (train,) = result["training"]
    assert train["preset"] == "toy" and train["steps"] >= 1
    assert train["ours_images_per_s"] > 0 and train["plain_images_per_s"] > 0
    assert train["met"] == (train["ratio"] <= 1.05)
    (sample,) = result["sampling"]
    assert sample["sampler"] == "heun" and sample["nfe"] == 5
    assert sample["ratio"] > 0 and sample["first_call_ratio"] > 0
    assert sample["max_abs_difference_sampler_vs_bare"] < 1e-3
    assert returned["training"][0]["ratio"] == train["ratio"]
    assert runner.render_readme(result) == result[README_KEY]  # the block is the JSON's
    printed = capsys.readouterr().out
    assert "| toy |" in printed and "torch " + torch.__version__ in printed


@pytest.mark.slow
def test_scoring_and_optuna_at_tiny_size(tmp_path) -> None:
    out = tmp_path / "overhead.json"
    runner.main(
        [
            "--quick",
            "--presets",
            "toy",
            "--only",
            "optuna",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    (score,) = result["scoring"]  # the optuna share needs the scoring row's trial compute
    assert score["score_seconds"] > 0 and score["generate_seconds"] > 0
    assert score["target"] is None and score["met"] is None  # toy: no target
    (row,) = result["optuna"]
    assert row["inner_trials"] == 6 and row["trial_seconds"] > 0
    assert row["overhead_seconds"] == pytest.approx(row["trial_seconds"] - row["direct_seconds"])
    assert row["storage_seconds"] > 0 and row["commits_per_trial"] >= 1
    assert row["sampler_seconds"] >= 0 and 0 < row["overhead_fraction"] < 1
    assert row["overhead_fraction_full_trial"] is None  # 100 images, not the preset's 1,000
    assert row["met"] == (row["overhead_fraction"] <= 0.05)
    assert runner.render_readme(result) == result[README_KEY]
