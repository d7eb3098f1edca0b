"""``sigmatune schedule``: one schedule per method for a model, printed and written in every
export format, which other tools load; an unsafe model file is refused before anything is
computed or written."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from sigmatune.models.data import gmm2d_mixture
from sigmatune.models.networks import make_network
from sigmatune.models.placement import gits, ld3
from sigmatune.models.schedules import karras, loglinear, validate
from sigmatune.study.commands.cli import main
from sigmatune.study.commands.schedule import make_schedule
from sigmatune.study.modelfile import save_model_file
from sigmatune.study.schedules import METHODS

RING = "sigmatune.models.data:gmm2d_mixture"
# small settings: what is computed and written is tested here, not the methods' quality
SMALL = ["--num-noises", "8", "--teacher-steps", "10", "--iterations", "3"]
GITS_SMALL = {"num_noises": 8, "teacher_steps": 10}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_every_format_and_the_files_load(method, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--method", method, "--nfe", "7", "--denoiser", RING, "-o", str(out), *SMALL]
    rc = main(["schedule", *args])
    assert rc == 0
    printed = capsys.readouterr().out
    stem = out / f"{method}-heun-nfe7"
    paths = {
        "json": stem.with_suffix(".json"),
        "csv": stem.with_suffix(".csv"),
        "k-diffusion": stem.with_suffix(".pt"),
        "diffusers": stem.with_suffix(".diffusers.json"),
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    for path in paths.values():
        assert str(path) in printed
    doc = _strict(paths["json"].read_text())
    sigmas = doc["schedules"]["7"]["sigmas"]
    s = validate(sigmas)
    assert s.numel() == 5  # heun at NFE 7: 4 steps
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002)
    assert doc["method"] == method and doc["schedules"]["7"]["source"] == method
    assert doc["model"] == RING
    payload = torch.load(paths["k-diffusion"], weights_only=True)
    assert payload["sigmas"].dtype == torch.float64 and payload["sigmas"].tolist() == sigmas
    assert payload["k_diffusion_sampler"] == "sample_heun" and payload["source"] == method
    rows = list(csv.DictReader(paths["csv"].read_text().splitlines()))
    assert [float(r["sigmas"]) for r in rows] == sigmas
    diffusers = _strict(paths["diffusers"].read_text())
    assert diffusers["sigmas"] == sigmas and diffusers["sampler"] == "heun"
    assert ", ".join(f"{v:.6g}" for v in sigmas) in printed
    if method in ("karras", "loglinear"):
        assert doc["cost"]["denoiser_evaluations"] == 0
    else:
        assert doc["cost"]["denoiser_evaluations"] > 0


def test_the_schedules_are_the_methods_own(tmp_path):
    from sigmatune.study.config import load_config

    config = load_config("toy", {"sigma_min": 0.01, "sigma_max": 20.0, "device": "cpu"})
    D = gmm2d_mixture()
    common = dict(config=config, denoiser=D, output=None)
    got = {m: make_schedule(m, 9, settings={"gits": GITS_SMALL}, **common) for m in METHODS}
    assert got["karras"].sigmas == karras(5, 0.01, 20.0, 7.0).tolist()
    rho3 = make_schedule("karras", 9, rho=3.0, **common)
    assert rho3.sigmas == karras(5, 0.01, 20.0, 3.0).tolist()
    assert got["loglinear"].sigmas == loglinear(5, 0.01, 20.0).tolist()
    direct = gits(D, (2,), 9, "heun", sigma_min=0.01, sigma_max=20.0, **GITS_SMALL)
    assert got["gits"].sigmas == direct.sigmas.tolist()
    # LD3 (its default settings) started from GITS's schedule, GITS's cost included
    found = ld3(
        D, (2,), 9, "heun", sigma_min=0.01, sigma_max=20.0, init=direct.sigmas,
        num_noises=32, teacher_steps=32, iterations=30,
    )  # fmt: skip
    assert got["ld3"].sigmas == found.sigmas.tolist()
    assert got["ld3"].placement.denoiser_evaluations == (
        direct.denoiser_evaluations + found.denoiser_evaluations
    )
    assert got["ld3"].placement.info["start"] == "gits"
    dpm = make_schedule("karras", 9, sampler="dpmpp_2m", **common)
    assert len(dpm.sigmas) == 10  # dpmpp_2m: one evaluation per step


def test_a_model_file_gives_the_shape(tmp_path, capsys):
    net = make_network("mlp", {"hidden": 16, "depth": 1, "emb_dim": 8}, (2,))
    path = tmp_path / "model.pt"
    save_model_file(
        path, net=net, network="mlp", network_params={"hidden": 16, "depth": 1, "emb_dim": 8},
        shape=(2,), parameterisation="edm", sigma_data=0.5, dataset="gmm2d", nimg=0,
    )  # fmt: skip
    rc = main(["schedule", "--method", "gits", "--nfe", "5", "--checkpoint", str(path),
               "-o", str(tmp_path / "o"), *SMALL])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    doc = _strict((tmp_path / "o" / "gits-heun-nfe5.json").read_text())
    assert doc["model"] == str(path)
    assert doc["info"]["num_noises"] == 8 and doc["info"]["teacher_steps"] == 10


class Payload:  # not a tensor or a plain value: a pickle that could run code on load
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_an_unsafe_checkpoint_is_refused_in_one_paragraph_and_nothing_is_written(tmp_path, capsys):
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "evil": Payload()}, path)
    out = tmp_path / "out"
    rc = main(["schedule", "--method", "ld3", "--nfe", "7", "--checkpoint", str(path),
               "-o", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 2
    assert "this ran while loading" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "refuses to load it" in lines[0]
    assert not out.exists()


def test_a_placement_without_a_model_is_an_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["schedule", "--method", "gits", "--nfe", "7", "-o", str(out)])
    assert rc == 2
    assert "needs the model" in capsys.readouterr().err
    assert not out.exists()


def test_help_explains_the_methods_and_the_files(capsys):
    with pytest.raises(SystemExit):
        main(["schedule", "--help"])
    text = capsys.readouterr().out
    for word in ("karras", "loglinear", "gits", "ld3", "Chen et al. 2024", "Tong et al. 2025"):
        assert word in text
    assert "weights_only=True" in text and ".diffusers.json" in text
