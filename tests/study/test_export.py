"""study.export: the JSON export and its schema, the CSV, k-diffusion and diffusers formats,
the attached artifact, the CLI, and (slow) reproducing a toy run's FID from the export."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import optuna
import pytest
import torch

from sigmatune.models.analytic import GaussianMixture
from sigmatune.models.samplers import euler, heun
from sigmatune.models.schedules import validate
from sigmatune.study import formats as E
from sigmatune.study import records
from sigmatune.study.commands.cli import main
from sigmatune.study.commands.export import attach_export, export
from sigmatune.study.records import read_study
from sigmatune.study.storage import open_storage


def _strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _all_sigma_lists(node, path="$"):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "sigmas":
                yield f"{path}.{k}", v
            else:
                yield from _all_sigma_lists(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _all_sigma_lists(v, f"{path}[{i}]")


@pytest.fixture
def data(synthetic_study):
    return read_study(synthetic_study.storage, synthetic_study.name)


@pytest.fixture
def doc(data):
    return E.export_document(data)


# ------------------------------------------------------------------------------ JSON


def test_json_export_validates_against_the_shipped_schema(doc):
    schema = E.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(_strict_loads(E.dumps(doc)), schema)
    assert E.SCHEMA_PATH.name == "export.schema.json" and E.SCHEMA_PATH.parent.name == "study"


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d.pop("schedules"),
        lambda d: d.update(format="other"),
        lambda d: d["schedules"]["5"].update(sigmas=[1.0]),
        lambda d: d["schedules"]["5"]["sigmas"].__setitem__(1, -0.5),
        lambda d: d["schedules"]["5"].update(sampler="rk4"),
        lambda d: d["training"]["table"].pop("W"),
        lambda d: d["training"].update(parameterisation="score"),
        lambda d: d["schedules"]["5"]["held_out"].pop("karras_rho7_same_range"),
        lambda d: d["schedules"]["5"]["held_out"].update(seeds=[0, 256, 1]),
        lambda d: d["fid_settings"].pop("held_out_seeds"),
    ],
)
def test_schema_rejects_broken_exports(doc, breakage):
    broken = json.loads(json.dumps(doc))
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, E.load_schema())


def test_every_sigma_list_is_a_valid_schedule(doc):
    found = list(_all_sigma_lists(doc))
    # 2 NFE budgets x (tuned + 3 fair baselines)
    assert len(found) == 8
    for path, sigmas in found:
        s = validate(sigmas)
        assert s[0] > s[1] and float(s[-1]) == 0.0, path


def test_export_holds_the_best_trial_and_its_inner_results(doc, synthetic_study):
    exp = synthetic_study.expected[synthetic_study.best_number]
    assert doc["study"] == "synth" and doc["trial"] == 1 and doc["is_best"] is True
    assert doc["fid"] == pytest.approx(exp["inner"][5].held_out.mean("tuned"))
    assert doc["primary_nfe"] == 5 and doc["kind"] == "bilevel"
    assert doc["dataset"] == "gmm2d" and doc["model_artifact"] == "model-1"
    settings = doc["fid_settings"]
    assert settings["search_seeds"] == [0, 256]
    assert settings["held_out_seeds"] == [256, 256, 3]  # disjoint from the search seeds
    assert settings["floors"]["floor"] == 0.004
    assert doc["training"]["description"] == exp["description"]
    for nfe, best in exp["inner_best"].items():
        sched = doc["schedules"][str(nfe)]
        assert sched["sigmas"] == best.user_attrs[records.SIGMAS]
        assert sched["search_fid"] == best.user_attrs[records.FID]
        assert sched["inner_trial"] == best.number
        assert sched["inner_study"] == f"synth/trial-0001/nfe-{nfe}"
        assert sched["sampler"] == "heun" and sched["num_steps"] == len(sched["sigmas"]) - 1
        assert sched["sampler_kwargs"]["S_max"] == "inf"  # strict JSON for math.inf
        held = exp["inner"][nfe].held_out
        # the export contract: exactly these keys, the held-out means and the floor
        assert list(sched["held_out"]) == list(records.EXPORT_HELD_OUT_KEYS)
        for name in ("tuned", *records.HELD_OUT_BASELINES):
            assert sched["held_out"][name] == pytest.approx(held.mean(name))
        assert sched["held_out"]["tuned_spread"] == pytest.approx(held.spread("tuned"))
        assert sched["held_out"]["floor"] == 0.004 and sched["held_out"]["floor_spread"] == 0.001
        assert set(sched["baselines"]) == set(records.HELD_OUT_BASELINES)
        assert sched["lam"] == pytest.approx([-2 * math.log(s) for s in sched["sigmas"][:-1]])


def test_weighting_table_matches_edm_closed_form_for_the_edm_trial(data):
    doc = E.export_document(data, trial=0)
    t = doc["training"]["table"]
    lam = torch.tensor(t["lam"], dtype=torch.float64)
    assert float(lam[0]) == pytest.approx(-2 * math.log(80.0))
    assert float(lam[-1]) == pytest.approx(-2 * math.log(0.002))
    sd = doc["training"]["sigma_data"]
    normal = torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi))
    ratio = torch.tensor(t["W"], dtype=torch.float64) / (normal * (torch.exp(-lam) + sd**2) / sd**2)
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9)
    assert float(torch.trapezoid(torch.tensor(t["W_normalised"], dtype=torch.float64), lam)) == (
        pytest.approx(1.0)
    )
    assert doc["name"] == "edm" and doc["is_best"] is False


def test_trial_and_nfe_selection_and_their_errors(data):
    assert list(E.export_document(data, trial=2, nfe=9)["schedules"]) == ["9"]
    with pytest.raises(
        ValueError, match="trial 3 .* is FAIL, not COMPLETE; complete trials: 0, 1, 2"
    ):
        E.export_document(data, trial=3)
    with pytest.raises(ValueError, match="no inner study at nfe=7; valid: 5, 9"):
        E.export_document(data, nfe=7)
    with pytest.raises(ValueError, match="no trial number=12"):
        E.export_document(data, trial=12)


# ------------------------------------------------------------------------------ CSV


def test_csv_has_one_row_per_step_with_the_sigmas(doc):
    rows = list(csv.DictReader(io.StringIO(E.to_csv(doc))))
    assert list(rows[0]) == ["nfe", "sampler", "step", "sigmas", "lam"]
    for nfe, sched in doc["schedules"].items():
        mine = [r for r in rows if r["nfe"] == nfe]
        assert [float(r["sigmas"]) for r in mine] == sched["sigmas"]  # exact (repr round-trip)
        assert [int(r["step"]) for r in mine] == list(range(len(sched["sigmas"])))
        assert mine[-1]["lam"] == ""


# ------------------------------------------------------------------------------ k-diffusion


def _gmm() -> GaussianMixture:
    return GaussianMixture([[-1.0, 0.5], [1.0, -0.5], [0.0, 1.5]], [0.2, 0.3, 0.25])


def _kdiffusion_sample_heun(
    model, x, sigmas, extra_args=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0
):
    """k-diffusion's sample_heun (k_diffusion/sampling.py), written out: model(x, sigma * s_in)
    is the denoised image; the step into sigma = 0 is an Euler step."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = (
            min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        )
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + torch.randn_like(x) * s_noise * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = (x - denoised) / sigma_hat
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def test_kdiffusion_export_loads_and_drives_a_kdiffusion_sampler(doc, tmp_path):
    path = tmp_path / "best.pt"
    result = E.render(doc, "k-diffusion", nfe=5, output=path)
    assert result.paths == [path]
    payload = torch.load(path, weights_only=True)
    sigmas = payload["sigmas"]
    assert sigmas.dtype == torch.float64 and sigmas.tolist() == doc["schedules"]["5"]["sigmas"]
    assert payload["sampler"] == "heun" and payload["sampler_kwargs"]["s_tmax"] == math.inf

    gmm = _gmm()
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # the two-line snippet, run as written with K.sampling.sample_heun = the test's sampler
    scope = {
        "torch": torch,
        "noise": noise,
        "model": gmm.denoise,
        "K": SimpleNamespace(sampling=SimpleNamespace(sample_heun=_kdiffusion_sample_heun)),
    }
    snippet = payload["snippet"]
    assert len(snippet.strip().splitlines()) == 2 and "K.sampling.sample_heun" in snippet
    exec(snippet, scope)
    ours = heun(gmm.denoise, noise * sigmas[0], sigmas)
    assert torch.allclose(scope["x0"], ours, atol=1e-10)


# ------------------------------------------------------------------------------ diffusers


@pytest.mark.slow  # importing diffusers alone takes about 5 s
def test_diffusers_euler_scheduler_accepts_the_sigmas_and_keeps_them(doc, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    exported = _strict_loads(E.render(doc, "diffusers", nfe=9).text)
    sigmas = exported["sigmas"]
    assert sigmas == doc["schedules"]["9"]["sigmas"]
    # Stable Diffusion's scheduler config, built locally (nothing is downloaded)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )
    scheduler.set_timesteps(sigmas=sigmas)
    assert torch.equal(scheduler.sigmas, torch.tensor(sigmas, dtype=torch.float32))
    assert len(scheduler.timesteps) == len(sigmas) - 1

    # The scheduler's Euler steps on these sigmas are our Euler sampler's (GMM denoiser).
    gmm = _gmm()
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    x = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        scheduler.scale_model_input(x, t)
        sigma = float(scheduler.sigmas[i])
        D = gmm.denoise(x.double(), torch.full((x.shape[0],), sigma, dtype=torch.float64))
        eps = ((x.double() - D) / sigma).float()  # what an eps-prediction model returns
        x = scheduler.step(eps, t, x).prev_sample
    ours = euler(
        lambda y, s: gmm.denoise(y.double(), s.double()).to(y.dtype),
        noise.double() * sigmas[0],
        torch.tensor(sigmas, dtype=torch.float32).double(),
    )
    assert torch.allclose(x.double(), ours, rtol=1e-4, atol=1e-4)

    flow = FlowMatchEulerDiscreteScheduler(shift=1.0)
    flow.set_timesteps(sigmas=exported["flow_match_sigmas"])
    back = flow.sigmas[:-1].double()
    assert torch.allclose(
        back / (1 - back), torch.tensor(sigmas[:-1], dtype=torch.float64), rtol=1e-4
    )
    assert float(flow.sigmas[-1]) == 0.0


# ------------------------------------------------------------------------------ artifacts


def test_attach_export_puts_json_and_csv_on_the_best_trial_and_replaces_them(
    synthetic_study, tmp_path
):
    from optuna_dashboard.artifact._backend import list_trial_artifacts

    storage = synthetic_study.storage
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir()
    record = attach_export(storage, store, "synth", tmp_path / "export")
    assert record["trial"] == 1
    study = optuna.load_study(study_name="synth", storage=storage)
    assert study.user_attrs[records.EXPORT] == record

    def listed(number):
        trial = study.trials[number]
        return list_trial_artifacts(
            storage.get_study_system_attrs(study._study_id),
            storage.get_trial_system_attrs(trial._trial_id),
            trial,
        )

    metas = {m["filename"]: m for m in listed(1)}
    stem = E.file_stem("synth", 1)
    assert set(metas) == {f"{stem}-export.json", f"{stem}-export.csv"}
    out = tmp_path / "downloaded.json"
    optuna.artifacts.download_artifact(
        artifact_store=store, artifact_id=record["artifacts"]["json"], file_path=str(out)
    )
    assert _strict_loads(out.read_text()) == E.export_document(read_study(storage, "synth"))

    again = attach_export(storage, store, "synth", tmp_path / "export", trial=2)
    assert listed(1) == [] and len(listed(2)) == 2
    assert not (tmp_path / "artifacts" / record["artifacts"]["json"]).exists()
    assert again["trial"] == 2


def test_after_run_hook_attaches_the_best_trials_export(synthetic_study, tmp_path):
    from sigmatune.study.commands.hooks import attach_best_export as after_run

    messages = []
    (tmp_path / "artifacts").mkdir()
    ctx = SimpleNamespace(
        storage=synthetic_study.storage,
        log=messages.append,
        run_dir=lambda uid: tmp_path / "work",
        artifact_store=optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts")),
    )
    study = optuna.load_study(study_name="synth", storage=synthetic_study.storage)
    after_run(ctx, study)
    record = optuna.load_study(study_name="synth", storage=synthetic_study.storage).user_attrs[
        records.EXPORT
    ]
    assert record["trial"] == synthetic_study.best_number
    stem = E.file_stem("synth", 1)
    export_dir = tmp_path / "work" / "export"
    assert messages == [
        f"export of the best trial 1 attached to it: {export_dir / stem}-export.json, "
        f"{export_dir / stem}-export.csv"
    ]
    assert (export_dir / f"{stem}-export.json").is_file()


# ------------------------------------------------------------------------------ CLI


def test_cli_export_writes_each_format(synthetic_study, tmp_path, capsys):
    url = synthetic_study.url
    assert main(["export", "synth", "--storage", url, "-o", str(tmp_path / "e.json")]) == 0
    jsonschema.validate(_strict_loads((tmp_path / "e.json").read_text()), E.load_schema())
    capsys.readouterr()
    assert main(["export", "--storage", url, "--format", "csv"]) == 0  # the only study
    assert capsys.readouterr().out.startswith("nfe,sampler,step,sigmas,lam\n")
    assert (
        main(
            [
                "export",
                "synth",
                "--storage",
                url,
                "--format",
                "diffusers",
                "--nfe",
                "9",
                "--trial",
                "0",
            ]
        )
        == 0
    )
    assert _strict_loads(capsys.readouterr().out)["trial"] == 0
    pt = tmp_path / "k.pt"
    assert (
        main(
            ["export", "synth", "--storage", url, "--format", "k-diffusion", "--nfe", "5"]
            + ["-o", str(pt)]
        )
        == 0
    )
    assert "K.sampling.sample_heun(model, noise * sigmas[0], sigmas" in capsys.readouterr().out
    assert torch.load(pt, weights_only=True)["nfe"] == 5
    # without --nfe: one file per NFE budget, in the given folder, each path printed
    folder = tmp_path / "kd"
    folder.mkdir()
    assert main(["export", "--storage", url, "--format", "k-diffusion", "-o", str(folder)]) == 0
    captured = capsys.readouterr()
    files = sorted(folder.glob("*.pt"))
    assert [torch.load(f, weights_only=True)["nfe"] for f in files] == [5, 9]
    for f in files:
        assert str(f) in captured.err and str(f) in captured.out


def test_cli_export_errors_are_one_clear_line(synthetic_study, tmp_path, capsys):
    missing = tmp_path / "missing.db"
    assert main(["export", "synth", "--storage", f"sqlite:///{missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.exists()
    assert main(["export", "other", "--storage", synthetic_study.url]) == 2
    assert "no sigmatune study named 'other'" in capsys.readouterr().err
    assert main(["export", "synth", "--storage", synthetic_study.url, "--trial", "3"]) == 2
    assert "FAIL, not COMPLETE" in capsys.readouterr().err


def test_cli_report_writes_one_html_file(synthetic_study, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "synth", "--storage", synthetic_study.url, "-o", str(out)]) == 0
    text = out.read_text()
    assert text.count('class="plotly-graph-div"') == 5
    assert "sigmatune-export" in text  # the embedded JSON export


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_toy_run_export_reproduces_the_trials_fid(toy_run, tmp_path):
    """The export's held-out figures are what scoring its schedules on its held-out seeds
    gives, with the model it names (an independent re-run of the measurement)."""
    from sigmatune.study.context import make_context
    from sigmatune.study.modelfile import load_model_file
    from sigmatune.study.records import Schedule
    from sigmatune.study.scoring import score_schedule

    doc = export(toy_run.url, toy_run.name).document
    jsonschema.validate(_strict_loads(E.dumps(doc)), E.load_schema())
    for _, sigmas in _all_sigma_lists(doc):
        validate(sigmas)

    ctx = make_context(toy_run.config, progress=False, log=lambda _m: None)
    first, per_set, sets = doc["fid_settings"]["held_out_seeds"]
    search_start, n = doc["fid_settings"]["search_seeds"]
    assert first >= search_start + n  # held-out seeds never overlap the search seeds
    model = tmp_path / "model.pt"
    optuna.artifacts.download_artifact(
        artifact_store=ctx.artifact_store, artifact_id=doc["model_artifact"], file_path=str(model)
    )
    denoiser, _ = load_model_file(model, ctx.device)
    for sched in doc["schedules"].values():
        kwargs = {k: float(v) for k, v in sched["sampler_kwargs"].items()}
        schedule = Schedule(sched["sampler"], tuple(sched["sigmas"]), kwargs)
        fids = [
            score_schedule(
                ctx, denoiser, schedule, range(first + k * per_set, first + (k + 1) * per_set)
            )
            for k in range(sets)
        ]
        assert sum(fids) / sets == pytest.approx(sched["held_out"]["tuned"], abs=1e-6)
        search = score_schedule(ctx, denoiser, schedule, range(search_start, search_start + n))
        assert search == pytest.approx(sched["search_fid"], abs=1e-6)
    assert doc["fid"] == pytest.approx(
        doc["schedules"][str(doc["primary_nfe"])]["held_out"]["tuned"]
    )

    # the run attached the best trial's export to it
    storage = open_storage(toy_run.url)
    study = optuna.load_study(study_name=toy_run.name, storage=storage)
    record = study.user_attrs[records.EXPORT]
    assert record["trial"] == doc["trial"] == toy_run.summary.best_trial
    path = tmp_path / "attached.json"
    optuna.artifacts.download_artifact(
        artifact_store=ctx.artifact_store,
        artifact_id=record["artifacts"]["json"],
        file_path=str(path),
    )
    attached = _strict_loads(path.read_text())
    assert attached["schedules"] == doc["schedules"]
    assert Path(E.SCHEMA_PATH).is_file()
