"""A local diffusers model folder through the product (issue 21): ``tune-sampling`` and
``schedule`` with ``--denoiser diffusers:PATH``, a reference given as FID statistics
(``--reference-stats``, no floor), and ``export --format diffusers`` for every NFE with what
each of the model's own schedulers accepts. Tiny models with random weights are saved into a
temporary folder (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from sigmatune.study.commands.cli import main

diffusers = pytest.importorskip("diffusers")

DDPM_BETAS = (1e-4, 0.02, 1000)  # diffusers' default linear table


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(channels: int = 3, num_class_embeds: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        num_class_embeds=num_class_embeds,
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        add_attention=False,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def model_folder(root: Path) -> Path:
    """A UNet2DModel folder with its DDPM scheduler config beside it (images 3x8x8)."""
    folder = root / "model"
    tiny_unet().save_pretrained(folder)
    diffusers.DDPMScheduler().save_pretrained(folder)
    return folder


def latent_pipeline(root: Path) -> Path:
    """A latent pipeline folder: latents 4x8x8, decoded by its VAE to images 1x16x16."""
    folder = root / "pipeline"
    tiny_unet(channels=4).save_pretrained(folder / "unet")
    torch.manual_seed(2)
    diffusers.AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,
    ).save_pretrained(folder / "vae")
    diffusers.DDIMScheduler().save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "DiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def stats_file(path: Path, dim: int) -> Path:
    """mu and sigma of uniform images in [-1, 1], saved as pytorch-fid does."""
    x = np.random.default_rng(0).uniform(-1, 1, size=(300, dim))
    np.savez(path, mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    return path


def ddpm_sigmas() -> np.ndarray:
    """VE sigma of each training timestep of the default DDPM table, from its definition (in
    float64; diffusers builds the table in float32: agreement to ~1e-4 relative)."""
    lo, hi, n = DDPM_BETAS
    abar = np.cumprod(1 - np.linspace(lo, hi, n, dtype=np.float64))
    return np.sqrt((1 - abar) / abar)


TINY = [
    "--preset",
    "toy",
    "--set",
    "inner.fid_extractor=raw",
    "--set",
    "inner.fid_num_images=16",
    "--set",
    "inner.batch_size=16",
    "--set",
    "inner.held_out_sets=3",
    "--inner-trials",
    "2",
    "--sampler",
    "euler",
    "--reference-steps",
    "0",
]


@pytest.mark.slow  # diffusers' import and a two-budget study of a latent pipeline: ~30 s
def test_tune_sampling_of_a_latent_pipeline_against_statistics_and_its_export(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    folder = latent_pipeline(tmp_path)
    stats = stats_file(tmp_path / "ref.npz", 1 * 16 * 16)  # the decoded images' features
    args = [
        "tune-sampling",
        *TINY,
        "--denoiser",
        f"diffusers:{folder}",
        "--reference-stats",
        str(stats),
        "--nfe",
        "2",
        "3",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    # progress: what runs, before the first result, and per budget
    assert out.index("tune-sampling: diffusers model") < out.index("nfe 2: euler, held-out")
    assert "decoded to images (1, 16, 16)" in out
    assert "preparing the FID reference of 'stats:" in out
    assert "nfe 2 (1/2): searching 2 inner trials" in out
    assert "nfe 3 (2/2): searching" in out
    assert "inner trials: 2/2" in captured.err  # the search's own progress lines
    # the sigma range is the model's own (DDIM's default table: sigma 0.0100 .. 157.4)
    table = ddpm_sigmas()
    assert "sigma range [0.0100" in out and ", 157.4" in out
    # no floor is made up for a statistics reference
    assert "floor unknown" in out

    from sigmatune.study.formats import load_schema
    from sigmatune.study.records import read_study
    from sigmatune.study.storage import make_storage

    study = read_study(make_storage("sqlite:///sigmatune.db"), "toy-sampling")
    assert study.floors is None
    assert study.model_info["latent"] is True and study.model_info["image_shape"] == [1, 16, 16]
    assert study.model_info["scheduler_config"]["_class_name"] == "DDIMScheduler"
    assert study.config.sigma_min == pytest.approx(table[0], rel=2e-4)
    assert study.config.sigma_max == pytest.approx(table[-1], rel=2e-4)
    held = study.best.inner[2].held_out
    assert held.floor is None and held.floor_spread is None and held.mean("tuned") > 0

    assert main(["export", "toy-sampling", "-o", "e.json"]) == 0
    doc = json.loads(Path("e.json").read_text())
    jsonschema.validate(doc, load_schema())
    assert doc["schedules"]["2"]["held_out"]["floor"] is None

    assert main(["export", "toy-sampling", "--format", "diffusers", "-o", "d.json"]) == 0
    exported = json.loads(Path("d.json").read_text())
    assert sorted(exported["schedules"]) == ["2", "3"]  # every NFE, not only the primary
    assert exported["sigmas"] == exported["schedules"]["2"]["sigmas"]  # the primary on top
    assert exported["model"]["scheduler"] == "DDIMScheduler" and "euler" in exported["tuned_for"]
    config = study.model_info["scheduler_config"]
    for nfe, sched in exported["schedules"].items():
        tuned = sched["sigmas"]
        assert sched["sampler"] == "euler" and len(tuned) == int(nfe) + 1
        entries = sched["schedulers"]
        # Euler takes the sigmas as they are
        euler = entries["EulerDiscreteScheduler"]
        s = diffusers.EulerDiscreteScheduler.from_config(config, **euler["config_overrides"])
        s.set_timesteps(sigmas=euler["values"])
        assert torch.equal(s.sigmas, torch.tensor(tuned, dtype=torch.float32))
        # DPM-Solver multistep takes integer timesteps: the sigmas it uses are the table's at
        # those timesteps (computed here from the betas), within the reported error
        dpm = entries["DPMSolverMultistepScheduler"]
        assert dpm["argument"] == "timesteps" and dpm["same_method_as"] == "dpmpp_2m"
        s = diffusers.DPMSolverMultistepScheduler.from_config(config, **dpm["config_overrides"])
        s.set_timesteps(timesteps=dpm["values"])
        assert s.timesteps.tolist() == dpm["values"]
        used = table[np.array(dpm["values"])]
        assert np.allclose(s.sigmas[:-1].double().numpy(), used, rtol=2e-4)
        errors = np.abs(used - np.array(tuned[:-1])) / np.array(tuned[:-1])
        assert np.allclose(errors, dpm["relative_sigma_errors"], atol=2e-4)
        # Heun takes fractional timesteps
        heun = entries["HeunDiscreteScheduler"]
        s = diffusers.HeunDiscreteScheduler.from_config(config, **heun["config_overrides"])
        s.set_timesteps(timesteps=heun["values"])
        steps = [float(s.sigmas[0]), *s.sigmas[1::2].tolist()][: len(tuned) - 1]
        assert np.allclose(steps, tuned[:-1], rtol=heun["max_relative_sigma_error"] + 1e-6)
        # DDIM and Euler ancestral take neither, and say the way round
        assert entries["DDIMScheduler"]["argument"] is None
        assert "EulerDiscreteScheduler" in entries["DDIMScheduler"]["note"]
        assert entries["EulerAncestralDiscreteScheduler"]["argument"] is None

    # resumed with --no-progress: the results are read back, and no progress line is printed
    assert main([*args, "--no-progress"]) == 0
    again = capsys.readouterr()
    assert "tune-sampling:" not in again.out and "searching" not in again.out
    assert "inner trials" not in again.err
    assert "nfe 2: euler, held-out" in again.out


def test_schedule_of_a_diffusers_model_uses_its_shape_and_range(tmp_path, capsys):
    folder = model_folder(tmp_path)
    out = tmp_path / "out"
    args = ["schedule", "--method", "karras", "--nfe", "4", "--sampler", "euler"]
    assert main([*args, "--denoiser", f"diffusers:{folder}", "-o", str(out)]) == 0
    table = ddpm_sigmas()
    doc = json.loads((out / "karras-euler-nfe4.json").read_text())
    assert doc["sigma_min"] == pytest.approx(table[0], rel=2e-4)
    assert doc["sigma_max"] == pytest.approx(table[-1], rel=2e-4)
    exported = json.loads((out / "karras-euler-nfe4.diffusers.json").read_text())
    entries = exported["schedules"]["4"]["schedulers"]
    assert entries["EulerDiscreteScheduler"]["values"] == doc["schedules"]["4"]["sigmas"]
    assert entries["DPMSolverMultistepScheduler"]["values"][0] == 999  # sigma_max: the top
    # GITS needs the model: its shape comes from the model, not from the config's data set
    assert main([*args[:2], "gits", *args[3:], "--denoiser", f"diffusers:{folder}",
                 "--num-noises", "2", "--teacher-steps", "6", "-o", str(out)]) == 0  # fmt: skip
    assert (out / "gits-euler-nfe4.diffusers.json").is_file()
    # a range the user set is kept (and checked)
    inside = ["--set", "sigma_min=0.05", "--set", "sigma_max=50"]
    assert main([*args, "--denoiser", f"diffusers:{folder}", *inside, "-o", str(out)]) == 0
    doc = json.loads((out / "karras-euler-nfe4.json").read_text())
    assert (doc["sigma_min"], doc["sigma_max"]) == (0.05, 50.0)


def test_class_labels_and_guidance_reach_a_class_conditional_model(tmp_path, capsys):
    folder = tmp_path / "classes"
    tiny_unet(num_class_embeds=4).save_pretrained(folder)
    diffusers.DDPMScheduler().save_pretrained(folder)
    out = tmp_path / "out"
    args = ["schedule", "--method", "gits", "--nfe", "3", "--sampler", "euler", "-o", str(out)]
    args += ["--num-noises", "2", "--teacher-steps", "4", "--denoiser", f"diffusers:{folder}"]
    assert main(args) == 2  # a class-conditional model needs its labels
    assert "needs labels" in _one_paragraph(capsys.readouterr().err)
    given = ["--class-labels", "1", "2", "--guidance-scale", "2.5", "--null-label", "0"]
    assert main([*args, *given]) == 0
    model = json.loads((out / "gits-euler-nfe3.diffusers.json").read_text())["model"]
    assert (model["labels"], model["guidance_scale"], model["null_label"]) == ([1, 2], 2.5, 0)


def _one_paragraph(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_a_sigma_range_outside_the_models_is_refused_and_nothing_written(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    folder = model_folder(tmp_path)
    stats = stats_file(tmp_path / "ref.npz", 3 * 8 * 8)
    before = sorted(p.name for p in tmp_path.iterdir())
    base = ["--denoiser", f"diffusers:{folder}", "--set", "sigma_max=1000"]
    rc = main(["tune-sampling", *TINY, *base, "--reference-stats", str(stats), "--nfe", "2"])
    assert rc == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "sigma_min/sigma_max" in err and "157.4" in err and "1000" in err
    rc = main(["schedule", "--method", "karras", "--nfe", "4", *base, "-o", "out"])
    assert rc == 2
    assert "157.4" in _one_paragraph(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no database, no files


def test_a_bad_model_folder_is_one_paragraph_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    stats = stats_file(tmp_path / "ref.npz", 3 * 8 * 8)
    no_scheduler = tmp_path / "no-scheduler"
    tiny_unet().save_pretrained(no_scheduler)
    before = sorted(p.name for p in tmp_path.iterdir())
    for folder, named in ((tmp_path / "missing", "not an existing directory"),
                          (no_scheduler, "scheduler_config.json")):  # fmt: skip
        spec = ["--denoiser", f"diffusers:{folder}"]
        rc = main(["tune-sampling", *TINY, *spec, "--reference-stats", str(stats)])
        assert rc == 2
        assert named in _one_paragraph(capsys.readouterr().err)
        assert main(["schedule", "--method", "karras", "--nfe", "3", *spec, "-o", "o"]) == 2
        assert named in _one_paragraph(capsys.readouterr().err)
    # class labels for an unconditional model: refused by the model's loader
    spec = ["--denoiser", f"diffusers:{model_folder(tmp_path / 'm')}", "--class-labels", "1"]
    assert main(["schedule", "--method", "karras", "--nfe", "3", *spec, "-o", "o"]) == 2
    assert "unconditional" in _one_paragraph(capsys.readouterr().err)
    # diffusers options without a diffusers model
    ring = ["--denoiser", "sigmatune.models.data:gmm2d_mixture", "--guidance-scale", "2"]
    assert main(["schedule", "--method", "karras", "--nfe", "3", *ring, "-o", "o"]) == 2
    assert "diffusers:PATH" in _one_paragraph(capsys.readouterr().err)
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "m")
    assert after == before


def test_statistics_are_refused_where_images_are_needed(tmp_path, capsys):
    """A statistics reference has no images: `run` (which trains) refuses it before anything
    is created, and --dataset with --reference-stats is one or the other."""
    stats = stats_file(tmp_path / "ref.npz", 16)
    db = tmp_path / "s.db"
    rc = main(["run", "--preset", "toy", "--set", f"dataset=stats:{stats}", "--storage",
               f"sqlite:///{db}", "--outer-trials", "1"])  # fmt: skip
    assert rc == 2
    assert "needs the data themselves" in _one_paragraph(capsys.readouterr().err)
    assert not db.exists() and not (tmp_path / "s-artifacts").exists()
    rc = main(["tune-sampling", "--preset", "toy", "--denoiser", "a:b", "--dataset", "gmm2d",
               "--reference-stats", str(stats)])  # fmt: skip
    assert rc == 2
    assert "not both" in _one_paragraph(capsys.readouterr().err)
