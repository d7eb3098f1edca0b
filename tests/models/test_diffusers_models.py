"""Tests of models.diffusers_models and models.diffusers_schedules on tiny diffusers models with
random weights, saved into a temporary folder (nothing downloaded).

The wrapper's samples come from sigmatune's own samplers (models/samplers.py) and are compared
with diffusers' own scheduler loops on the same network, noise and noise levels; the exported
timesteps' sigma errors are checked against the DDPM table computed here from its betas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sigmatune.models.diffusers_models import (
    DiffusersModelError,
    SigmaRangeError,
    load_diffusers_denoiser,
)
from sigmatune.models.diffusers_schedules import (
    FLOW_SIGMAS,
    NEITHER_FLOW,
    NEITHER_VP,
    VP_TIMESTEPS,
    diffusers_arguments,
)
from sigmatune.models.samplers import dpmpp_2m, euler
from sigmatune.models.schedules import karras

diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 8, 8)


def tiny_unet(channels: int = 3, num_class_embeds: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        add_attention=False,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
    ).eval()


def model_folder(tmp_path: Path, scheduler, *, subfolder: bool = False, unet=None) -> Path:
    """A model folder: the UNet's config.json and weights, the scheduler config beside them
    (or in scheduler/)."""
    folder = tmp_path / "model"
    (unet or tiny_unet()).save_pretrained(folder)
    scheduler.save_pretrained(folder / "scheduler" if subfolder else folder)
    return folder


def noise(shape=(2, *SHAPE), seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def ddpm_table(n: int = 1000) -> np.ndarray:
    """VE sigmas of the default DDPM table (linear betas 1e-4 .. 0.02), from its definition."""
    betas = np.linspace(1e-4, 0.02, n, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    return np.sqrt((1 - abar) / abar)


@torch.no_grad()
def diffusers_loop(unet, scheduler, x: torch.Tensor) -> torch.Tensor:
    """diffusers' own sampling loop (as its pipelines run it)."""
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(unet(x_in, t).sample, t, x).prev_sample
    return x


# -- the wrapper against diffusers' Euler loop -------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_euler_samples_equal_diffusers_euler_loop(tmp_path, prediction_type):
    folder = model_folder(
        tmp_path, diffusers.EulerDiscreteScheduler(prediction_type=prediction_type)
    )
    D = load_diffusers_denoiser(folder)
    assert (D.kind, D.prediction_type, D.shape) == ("vp", prediction_type, SHAPE)
    # (diffusers keeps the table in float32: 1 - abar of the first entry loses ~1e-4)
    assert D.sigma_min == pytest.approx(ddpm_table()[0], rel=2e-4)
    assert D.sigma_max == pytest.approx(ddpm_table()[-1], rel=1e-4)
    sigmas = karras(5, 0.05, 40.0)
    z = noise()
    ours = euler(D, float(sigmas[0]) * z, sigmas)
    unet = diffusers.UNet2DModel.from_pretrained(folder).eval()
    scheduler = diffusers.EulerDiscreteScheduler.from_pretrained(folder)
    scheduler.set_timesteps(sigmas=sigmas.tolist())
    theirs = diffusers_loop(unet, scheduler, float(sigmas[0]) * z)
    assert rel(ours, theirs) <= 1e-4
    # and the samples depend on the prediction type's conversion: a wrong one is far off
    wrong = "sample" if prediction_type != "sample" else "epsilon"
    D.prediction_type = wrong
    assert rel(euler(D, float(sigmas[0]) * z, sigmas), theirs) > 1e-2


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matching_euler_equals_flowmatch_scheduler_loop(tmp_path, shift):
    """A flow-matching model (FlowMatchEulerDiscreteScheduler config, scheduler/ subfolder):
    sigmatune's Euler through the wrapper equals diffusers' FlowMatchEuler loop run on the
    exported flow sigmas, started from the same state t_0 * noise."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    folder = model_folder(tmp_path, scheduler, subfolder=True)
    D = load_diffusers_denoiser(folder)
    assert (D.kind, D.prediction_type) == ("flow", "flow")
    t_min = shift * 1e-3 / (1 + (shift - 1) * 1e-3)
    assert D.sigma_min == pytest.approx(t_min / (1 - t_min), rel=1e-9)
    sigmas = karras(5, 0.05, 40.0)
    z = noise()
    ours = euler(D, float(sigmas[0]) * z, sigmas)

    entry = diffusers_arguments(sigmas, D.scheduler_config)["FlowMatchEulerDiscreteScheduler"]
    assert entry["argument"] == "sigmas" and entry["max_relative_sigma_error"] < 1e-5
    assert entry["values"] == pytest.approx((sigmas[:-1] / (1 + sigmas[:-1])).tolist())
    flow = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        scheduler.config, **entry["config_overrides"]
    )
    flow.set_timesteps(sigmas=entry["values"])
    unet = diffusers.UNet2DModel.from_pretrained(folder).eval()
    theirs = diffusers_loop(unet, flow, entry["values"][0] * z)
    assert rel(ours, theirs) <= 1e-4


def test_dpm_solver_on_exported_timesteps_is_sigmatunes_dpmpp_2m(tmp_path):
    """DPMSolverMultistepScheduler (dpmsolver++, order 2) on the exported integer timesteps
    runs sigmatune's dpmpp_2m on the rounded sigmas (same_method_as)."""
    folder = model_folder(tmp_path, diffusers.DDPMScheduler())
    D = load_diffusers_denoiser(folder)
    sigmas = karras(6, 0.05, 40.0)
    entry = diffusers_arguments(sigmas, D.scheduler_config)["DPMSolverMultistepScheduler"]
    assert entry["same_method_as"] == "dpmpp_2m"
    rounded = torch.tensor([*ddpm_table()[entry["values"]], 0.0], dtype=torch.float64)
    z = noise()
    ours = dpmpp_2m(D, float(rounded[0]) * z, rounded)
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        D.scheduler_config, **entry["config_overrides"]
    )
    scheduler.set_timesteps(timesteps=entry["values"])
    unet = diffusers.UNet2DModel.from_pretrained(folder).eval()
    s0 = float(rounded[0])
    theirs = diffusers_loop(unet, scheduler, s0 / math.sqrt(1 + s0**2) * z)  # VP state
    assert rel(ours, theirs) <= 1e-4


# -- models: pipelines, latents, labels, timesteps ---------------------------------------------


def tiny_vae():
    torch.manual_seed(2)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,
    ).eval()


def test_latent_pipeline_samples_are_decoded_by_its_vae(tmp_path):
    folder = tmp_path / "pipeline"
    unet, vae = tiny_unet(channels=4), tiny_vae()
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    diffusers.DDIMScheduler(prediction_type="epsilon").save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "DiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    D = load_diffusers_denoiser(folder)
    assert D.shape == (4, 8, 8) and D.image_shape == (3, 16, 16)
    sigmas = karras(3, 0.1, 20.0)
    latents = euler(D, float(sigmas[0]) * noise((2, 4, 8, 8)), sigmas)
    images = D.decode(latents)
    assert images.shape == (2, 3, 16, 16)
    with torch.no_grad():
        expected = vae.decode(latents / 0.5).sample  # the VAE's decoder on unscaled latents
    assert rel(images, expected) <= 1e-6
    assert rel(D.decode(latents), vae.decode(latents).sample.detach()) > 1e-3  # scaling used


def test_saved_ddpm_pipeline_folder_loads(tmp_path):
    folder = tmp_path / "ddpm"
    diffusers.DDPMPipeline(tiny_unet(), diffusers.DDPMScheduler()).save_pretrained(folder)
    D = load_diffusers_denoiser(folder)
    assert D.vae is None and D.image_shape == D.shape == SHAPE
    assert torch.equal(D.decode(torch.ones(1, *SHAPE)), torch.ones(1, *SHAPE))


def test_timesteps_interpolate_ln_sigma_or_round_to_nearest(tmp_path):
    scheduler = diffusers.EulerDiscreteScheduler()
    folder = model_folder(tmp_path, scheduler)
    abar = scheduler.alphas_cumprod.double().numpy()  # diffusers' own (float32) table
    table = np.sqrt((1 - abar) / abar)
    sigma = torch.tensor([table[10], math.sqrt(table[10] * table[11]), 0.5, 30.0, 500.0])
    t = load_diffusers_denoiser(folder).timestep(sigma)
    # ln-sigma interpolation: the table's own entry, the geometric midpoint half-way, the top
    # clipped to the last timestep; as diffusers' Euler computes it
    assert t[:2].tolist() == pytest.approx([10.0, 10.5], abs=1e-6)
    theirs = [float(scheduler._sigma_to_t(np.array(v), np.log(table))) for v in sigma.tolist()]
    assert t.tolist() == pytest.approx(theirs, abs=1e-6) and t[-1] == 999
    nearest = load_diffusers_denoiser(folder, timestep_mode="nearest").timestep(sigma)
    expected = np.abs(np.log(sigma.numpy())[:, None] - np.log(table)[None, :]).argmin(1)
    assert nearest.tolist() == expected.tolist() and nearest[0] == 10
    with pytest.raises(DiffusersModelError, match="timestep_mode"):
        load_diffusers_denoiser(folder, timestep_mode="round")
    # EDM-style configs (timestep_type="continuous"): the network gets 0.25 ln sigma
    continuous = diffusers.EulerDiscreteScheduler(
        prediction_type="v_prediction", timestep_type="continuous"
    )
    continuous.save_pretrained(folder)
    t = load_diffusers_denoiser(folder).timestep(sigma)
    assert t.tolist() == pytest.approx((0.25 * sigma.double().log()).tolist())
    continuous.set_timesteps(sigmas=[30.0, 0.5, 0.0])
    assert continuous.timesteps.tolist() == pytest.approx(t[2:4].flip(0).tolist(), rel=1e-6)


def test_class_conditional_labels_and_guidance(tmp_path):
    unet = tiny_unet(num_class_embeds=3)
    folder = model_folder(tmp_path, diffusers.DDPMScheduler(), unet=unet)
    x, sigma = noise((4, *SHAPE)), torch.full((4,), 2.0)
    c_in = 1 / math.sqrt(1 + 2.0**2)
    t = load_diffusers_denoiser(folder, labels=[0]).timestep(sigma).float()

    def eps(labels):
        with torch.no_grad():
            return unet(x * c_in, t, class_labels=torch.tensor(labels)).sample

    D = load_diffusers_denoiser(folder, labels=[0, 2])
    assert rel(D(x, sigma), x - 2.0 * eps([0, 2, 0, 2])) <= 1e-5  # row j: labels[j % 2]
    D = load_diffusers_denoiser(folder, labels=[1], guidance_scale=3.0, null_label=2)
    cond, uncond = eps([1, 1, 1, 1]), eps([2, 2, 2, 2])
    assert rel(D(x, sigma), x - 2.0 * (uncond + 3.0 * (cond - uncond))) <= 1e-5
    with pytest.raises(DiffusersModelError, match="needs labels"):
        load_diffusers_denoiser(folder)
    with pytest.raises(DiffusersModelError, match=r"labels=\[3\]"):
        load_diffusers_denoiser(folder, labels=[3])
    with pytest.raises(DiffusersModelError, match="null_label=None"):
        load_diffusers_denoiser(folder, labels=[1], guidance_scale=3.0)


def test_dit_pipeline_with_learned_variance_and_its_null_class(tmp_path):
    """A DiT pipeline folder (transformer/): the learned-variance half of the output is
    dropped, and guidance uses the extra "no class" embedding (index num_embeds_ada_norm)."""
    torch.manual_seed(0)
    net = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # mean and variance
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=5,
        norm_num_groups=4,
    ).eval()
    folder = tmp_path / "dit"
    net.save_pretrained(folder / "transformer")
    diffusers.DDPMScheduler().save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "DiTPipeline",
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    D = load_diffusers_denoiser(folder, labels=[1, 3], guidance_scale=4.0)
    assert D.shape == (4, 8, 8) and D.null_label == 5
    x, sigma = noise((2, 4, 8, 8)), torch.tensor([3.0, 0.5])
    c_in = (1 / (1 + sigma**2).sqrt()).reshape(-1, 1, 1, 1)
    t = D.timestep(sigma).float()
    with torch.no_grad():
        cond = net(x * c_in, t, class_labels=torch.tensor([1, 3])).sample[:, :4]
        uncond = net(x * c_in, t, class_labels=torch.tensor([5, 5])).sample[:, :4]
    eps = uncond + 4.0 * (cond - uncond)
    assert rel(D(x, sigma), x - sigma.reshape(-1, 1, 1, 1) * eps) <= 1e-5


# -- the σ range -------------------------------------------------------------------------------


def test_a_schedule_outside_the_models_range_is_refused(tmp_path):
    D = load_diffusers_denoiser(model_folder(tmp_path, diffusers.EulerDiscreteScheduler()))
    D.check_sigma_range(karras(5, D.sigma_min, D.sigma_max))  # its own range passes
    D.check_sigma_range(karras(5, D.sigma_min * (1 - 1e-7), D.sigma_max * (1 + 1e-7)))
    for lo, hi in ((0.002, 80.0), (0.05, 200.0)):
        with pytest.raises(SigmaRangeError) as info:
            D.check_sigma_range(karras(5, lo, hi), key="sigma_max")
        message = str(info.value)
        assert "\n" not in message and "sigma_max" in message and "157.4" in message
        with pytest.raises(SigmaRangeError):
            diffusers_arguments(
                karras(5, lo, hi), D.scheduler_config, check_range=D.check_sigma_range
            )


# -- exported arguments load into their schedulers ---------------------------------------------


@pytest.mark.parametrize("config_kwargs", [{}, {"use_karras_sigmas": True}])
def test_exported_timesteps_and_sigmas_load_into_their_schedulers(config_kwargs):
    """Every VP entry loads via set_timesteps; the scheduler's noise levels are those
    reported, and the reported errors are those of the DDPM table computed from its betas."""
    config = dict(diffusers.EulerDiscreteScheduler(**config_kwargs).config)
    sigmas = karras(8, 0.02, 80.0)
    target = sigmas[:-1].numpy()
    table = ddpm_table()
    out = diffusers_arguments(sigmas, config)
    json.dumps(out)  # JSON-able
    assert set(VP_TIMESTEPS) < set(out) and "EulerDiscreteScheduler" in out
    euler_entry = out["EulerDiscreteScheduler"]
    assert euler_entry["argument"] == "sigmas" and euler_entry["values"] == sigmas.tolist()
    assert euler_entry["max_relative_sigma_error"] < 1e-6
    for name in VP_TIMESTEPS:
        entry = out[name]
        assert entry["argument"] == "timesteps", name
        values = entry["values"]
        assert all(a > b for a, b in zip(values, values[1:])), name  # strictly decreasing
        cls = getattr(diffusers, name)
        scheduler = cls.from_config(config, **entry["config_overrides"])
        scheduler.set_timesteps(timesteps=values)  # loads
        if name == "HeunDiscreteScheduler":  # fractional, interpolated linearly in sigma
            used = np.interp(values, np.arange(1000), table)
        else:
            assert all(isinstance(v, int) for v in values), name
            used = table[values]
            # the nearest training timestep in ln sigma (below sigma_max of the table)
            nearest = np.abs(np.log(target)[:, None] - np.log(table)[None, :]).argmin(1)
            assert values == nearest.tolist(), name
        errors = np.abs(used - target) / target
        # (diffusers' table is float32: its small sigmas differ from float64 by ~1e-5)
        assert entry["relative_sigma_errors"] == pytest.approx(errors.tolist(), abs=3e-5), name
    assert out["HeunDiscreteScheduler"]["max_relative_sigma_error"] < 1e-2
    # 80 is inside the table (157.4): the first step is exact to rounding
    for name in NEITHER_VP:
        assert out[name]["argument"] is None and "takes neither" in out[name]["note"], name


def test_exported_flow_sigmas_load_into_unipc_and_flowmatch():
    config = dict(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    sigmas = karras(6, 0.05, 50.0)
    out = diffusers_arguments(sigmas, config)
    for name in FLOW_SIGMAS:
        entry = out[name]
        scheduler = getattr(diffusers, name).from_config(config, **entry["config_overrides"])
        scheduler.set_timesteps(sigmas=np.array(entry["values"]))  # (UniPC fails on a list)
        t = scheduler.sigmas[: len(entry["values"])].double()
        used = t / (1 - t)
        assert used.tolist() == pytest.approx(sigmas[:-1].tolist(), rel=1e-5), name
        assert float(scheduler.sigmas[-1]) == 0.0, name
        # the network is told t * 1000 (FlowMatchEuler) or int(t * 1000) (UniPC)
        t_net = np.asarray(entry["values"]) * 1000
        if name == "UniPCMultistepScheduler":
            t_net = np.floor(t_net)
        told = t_net / 1000 / (1 - t_net / 1000)
        errors = np.abs(told - sigmas[:-1].numpy()) / sigmas[:-1].numpy()
        assert entry["relative_sigma_errors"] == pytest.approx(errors.tolist(), abs=1e-5), name
    assert out["FlowMatchEulerDiscreteScheduler"]["max_relative_sigma_error"] < 1e-5
    for name in NEITHER_FLOW:
        assert out[name]["argument"] is None and "takes neither" in out[name]["note"], name
    json.dumps(out)


def test_a_schedule_beyond_the_table_is_reported_with_its_sigma_error():
    """sigma_max = 80 on a Stable-Diffusion-like table (scaled-linear betas, which ends at
    14.6): Euler steps with 80 but tells the network the last timestep, whose sigma is 14.6;
    the export reports that error instead of hiding it."""
    config = dict(
        diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        ).config
    )
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    abar = np.cumprod(1 - betas)
    top = math.sqrt((1 - abar[-1]) / abar[-1])
    assert top == pytest.approx(14.6, abs=0.05)
    sigmas = karras(8, 0.03, 80.0)
    out = diffusers_arguments(sigmas, config)
    for name in ("EulerDiscreteScheduler", *VP_TIMESTEPS):
        first = out[name]["relative_sigma_errors"][0]
        assert first == pytest.approx(1 - top / 80.0, rel=1e-4), name
        assert out[name]["max_relative_sigma_error"] == first, name


def test_exported_integer_timesteps_stay_strictly_decreasing():
    """Two sigmas nearest to the same training timestep must not give a repeated timestep
    (DDPM, LCM and TCD refuse one; DPM-Solver would divide by zero)."""
    table = ddpm_table()
    sigmas = torch.tensor(
        [table[5] * 1.0001, table[5], table[5] * 0.9999, 0.0], dtype=torch.float64
    )
    config = dict(diffusers.DDPMScheduler().config)
    out = diffusers_arguments(sigmas, config)
    assert out["DDPMScheduler"]["values"] == [6, 5, 4] or out["DDPMScheduler"]["values"] == [
        5,
        4,
        3,
    ]
    for name in ("DDPMScheduler", "LCMScheduler", "TCDScheduler"):
        getattr(diffusers, name).from_config(config).set_timesteps(timesteps=out[name]["values"])


# -- bad folders -------------------------------------------------------------------------------


def one_paragraph(info) -> str:
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    return message


def test_bad_folders_are_refused_in_one_paragraph(tmp_path):
    with pytest.raises(DiffusersModelError) as info:
        load_diffusers_denoiser("google/ddpm-cifar10-32")  # a hub id
    assert "not an existing directory" in one_paragraph(info)

    only_scheduler = tmp_path / "no-config"
    diffusers.DDPMScheduler().save_pretrained(only_scheduler)
    with pytest.raises(DiffusersModelError) as info:
        load_diffusers_denoiser(only_scheduler)
    assert "config.json" in one_paragraph(info)

    no_scheduler = tmp_path / "no-scheduler"
    tiny_unet().save_pretrained(no_scheduler)
    with pytest.raises(DiffusersModelError) as info:
        load_diffusers_denoiser(no_scheduler)
    assert "scheduler_config.json" in one_paragraph(info)

    def with_scheduler_config(name: str, **changes) -> Path:
        folder = tmp_path / name
        tiny_unet().save_pretrained(folder)
        config = dict(diffusers.DDPMScheduler().config) | {"_class_name": "DDPMScheduler"}
        (folder / "scheduler_config.json").write_text(json.dumps(config | changes))
        return folder

    with pytest.raises(DiffusersModelError) as info:
        load_diffusers_denoiser(with_scheduler_config("x0", prediction_type="x0"))
    message = one_paragraph(info)
    assert "prediction_type='x0'" in message and "v_prediction" in message
    assert "scheduler_config.json" in message

    with pytest.raises(DiffusersModelError) as info:
        load_diffusers_denoiser(with_scheduler_config("unknown", _class_name="NoSuchScheduler"))
    assert "_class_name='NoSuchScheduler'" in one_paragraph(info)

    with pytest.raises(DiffusersModelError) as info:  # a scheduler without a beta table
        load_diffusers_denoiser(with_scheduler_config("edm", _class_name="EDMEulerScheduler"))
    assert "alphas_cumprod" in one_paragraph(info)

    with pytest.raises(DiffusersModelError) as info:
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "scheduler_config.json").write_text("{not json")
        tiny_unet().save_pretrained(tmp_path / "broken")
        load_diffusers_denoiser(tmp_path / "broken")
    assert "scheduler_config.json" in one_paragraph(info)

    vae_as_model = tmp_path / "vae-only"
    tiny_vae().save_pretrained(vae_as_model)
    diffusers.DDPMScheduler().save_pretrained(vae_as_model)
    with pytest.raises(DiffusersModelError) as info:
        load_diffusers_denoiser(vae_as_model)
    assert "_class_name='AutoencoderKL'" in one_paragraph(info)

    pipeline = tmp_path / "pipeline-without-unet"
    diffusers.DDPMScheduler().save_pretrained(pipeline / "scheduler")
    (pipeline / "model_index.json").write_text(json.dumps({"scheduler": ["diffusers", "x"]}))
    with pytest.raises(DiffusersModelError) as info:
        load_diffusers_denoiser(pipeline)
    assert "unet/" in one_paragraph(info) and "model_index.json" in str(info.value)


# -- the README's snippets ---------------------------------------------------------------------


def test_readme_snippets_run_and_sample_as_sigmatune(tmp_path):
    """The snippets the README shows, one per scheduler family, verbatim between the markers,
    on a saved pipeline folder; each one's samples equal sigmatune's sampler on the model."""
    folder = str(tmp_path / "my-model-folder")
    diffusers.DDPMPipeline(tiny_unet(), diffusers.DDPMScheduler()).save_pretrained(folder)
    D = load_diffusers_denoiser(folder)
    sigmas = karras(6, 0.05, 40.0)
    exported = {"schedulers": diffusers_arguments(sigmas, D.scheduler_config)}
    shape = SHAPE
    torch.manual_seed(0)
    z = torch.randn(2, *shape)

    # --- snippet: sigmas= (Euler) ---
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    pipe = DiffusionPipeline.from_pretrained(folder)
    entry = exported["schedulers"]["EulerDiscreteScheduler"]
    scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, **entry["config_overrides"]
    )
    scheduler.set_timesteps(sigmas=entry["values"])  # the VE sigmas, final 0 included
    torch.manual_seed(0)
    x = entry["values"][0] * torch.randn(2, *shape)  # start at sigma_max
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = pipe.unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x).prev_sample
    # --- end ---
    assert rel(x, euler(D, float(sigmas[0]) * z, sigmas)) <= 1e-4

    # --- snippet: timesteps= (DPM-Solver multistep; Heun alike) ---
    import math

    from diffusers import DPMSolverMultistepScheduler

    entry = exported["schedulers"]["DPMSolverMultistepScheduler"]
    scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, **entry["config_overrides"]
    )
    scheduler.set_timesteps(timesteps=entry["values"])  # training timesteps, rounded
    s0 = float(scheduler.sigmas[0])  # VE sigma of the first timestep
    torch.manual_seed(0)
    x = s0 / math.sqrt(1 + s0**2) * torch.randn(2, *shape)  # the VP state at s0
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = pipe.unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x).prev_sample
    # --- end ---
    rounded = torch.tensor([*ddpm_table()[entry["values"]], 0.0], dtype=torch.float64)
    assert rel(x, dpmpp_2m(D, float(rounded[0]) * z, rounded)) <= 1e-4
    entry = exported["schedulers"]["HeunDiscreteScheduler"]
    heun = diffusers.HeunDiscreteScheduler.from_config(
        pipe.scheduler.config, **entry["config_overrides"]
    )
    heun.set_timesteps(timesteps=entry["values"])
    assert len(heun.timesteps) == 2 * 6 - 1

    flow_folder = str(tmp_path / "my-flow-model")
    unet = tiny_unet()
    unet.save_pretrained(flow_folder)
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(flow_folder)
    D = load_diffusers_denoiser(flow_folder)
    exported = {"schedulers": diffusers_arguments(sigmas, D.scheduler_config)}
    pipe_scheduler_config = diffusers.FlowMatchEulerDiscreteScheduler.load_config(flow_folder)

    # --- snippet: flow matching (sigmas= as t = sigma / (1 + sigma)) ---
    from diffusers import FlowMatchEulerDiscreteScheduler

    entry = exported["schedulers"]["FlowMatchEulerDiscreteScheduler"]
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipe_scheduler_config, **entry["config_overrides"]
    )
    scheduler.set_timesteps(sigmas=entry["values"])  # flow sigmas t, no final 0
    torch.manual_seed(0)
    x = entry["values"][0] * torch.randn(2, *shape)  # start at t_0 < 1, not from pure noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    # --- end ---
    assert rel(x, euler(D, float(sigmas[0]) * z, sigmas)) <= 1e-4
