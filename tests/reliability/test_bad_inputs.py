"""Bad input (issue 15, items 7 and 8): one paragraph on stderr, exit status 2, no traceback,
and the exact files on disk afterwards (nothing created, nothing changed).

Most cases call ``sigmatune.study.commands.cli.main`` in this process (what the ``sigmatune`` script
runs, without the seconds of a new interpreter); the slow ones run the command itself.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from sigmatune.study.commands.cli import main
from sigmatune.study.config import MAX_NAME_LENGTH

from .conftest import (  # noqa: TID252 - the suite's own helpers
    RUN,
    UNSAFE_ADVICE,
    hostile_pickle,
    one_paragraph,
    sigmatune,
    snapshot,
    start,
)


def _absent_device() -> str:
    """A CUDA device this machine does not have."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------ run and tune-sampling


@pytest.mark.parametrize(
    "command",
    [
        ("run", "config.toml", "--no-progress"),
        (
            "tune-sampling",
            "config.toml",
            "--no-progress",
            "--denoiser",
            "sigmatune.models.data:gmm2d_mixture",
        ),
    ],
    ids=["run", "tune-sampling"],
)
def test_a_device_this_machine_lacks_is_one_paragraph_and_writes_nothing(in_tmp, capsys, command):
    before = snapshot(in_tmp)
    device = _absent_device()
    rc, err = _cli(capsys, *command, "--device", device)
    err = one_paragraph(rc, err)
    assert repr(device) in err
    assert snapshot(in_tmp) == before  # no sigmatune.db, no run.db, no artifact folder


@pytest.mark.parametrize(
    "args",
    [
        ("run", "config.toml", "--no-progress", "--study-name", "n" * 300),
        (
            "tune-sampling",
            "config.toml",
            "--no-progress",
            "--denoiser",
            "sigmatune.models.data:gmm2d_mixture",
            "--study-prefix",
            "p" * 300,
        ),
        # the default prefix NAME-sampling crosses the bound although NAME does not
        (
            "tune-sampling",
            "config.toml",
            "--no-progress",
            "--denoiser",
            "sigmatune.models.data:gmm2d_mixture",
            "--study-name",
            "s" * MAX_NAME_LENGTH,
        ),
    ],
    ids=["run", "tune-sampling-prefix", "tune-sampling-derived-prefix"],
)
def test_a_study_name_over_the_bound_is_one_paragraph_and_writes_nothing(in_tmp, capsys, args):
    before = snapshot(in_tmp)
    rc, err = _cli(capsys, *args)
    err = one_paragraph(rc, err)
    assert f"at most {MAX_NAME_LENGTH} characters" in err
    assert snapshot(in_tmp) == before


# ------------------------------------------------------------------ model files


def _bad_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Files a user might pass as --checkpoint by mistake, or a hostile one on purpose."""
    files = {}
    rng = torch.Generator().manual_seed(0)
    files["random-bytes"] = folder / "random.pt"
    files["random-bytes"].write_bytes(bytes(torch.randint(0, 256, (4096,), generator=rng).tolist()))
    files["empty"] = folder / "empty.pt"
    files["empty"].write_bytes(b"")
    files["plain-pickle"] = hostile_pickle(folder / "plain.pkl", marker, torch_save=False)
    files["torch-save-pickle"] = hostile_pickle(folder / "evil.pt", marker)
    files["legacy-torch-save"] = folder / "legacy.pt"
    torch.save({"state_dict": {}}, files["legacy-torch-save"], _use_new_zipfile_serialization=False)
    files["other-zip"] = folder / "other.zip"
    with zipfile.ZipFile(files["other-zip"], "w") as z:
        z.writestr("readme.txt", "not a model")
    files["tensors-only"] = folder / "weights.pt"
    torch.save({"w": torch.zeros(3)}, files["tensors-only"])  # loads, but is no model file
    truncated = folder / "truncated.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "shape": [2]}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:600])
    files["truncated"] = truncated
    files["folder"] = folder / "a-folder.pt"
    files["folder"].mkdir()
    return files


BAD_CHECKPOINTS = [
    "random-bytes",
    "empty",
    "plain-pickle",
    "torch-save-pickle",
    "legacy-torch-save",
    "other-zip",
    "tensors-only",
    "truncated",
    "folder",
]


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_refused_before_any_expensive_work(in_tmp, capsys, monkeypatch, kind):
    """Refused by study.modelfile.read_model_file before the FID reference is built (the
    context that builds it must not even be made), never loaded unsafely, never advised to
    be; nothing is written and the file is left as it was."""
    from sigmatune.study import tune

    marker = in_tmp / "code-ran"
    path = _bad_checkpoints(in_tmp, marker)[kind]

    def expensive(*_a, **_k):
        raise AssertionError("tune-sampling started its expensive work before checking the file")

    monkeypatch.setattr(tune, "make_context", expensive)
    before = snapshot(in_tmp)
    rc, err = _cli(
        capsys, "tune-sampling", "config.toml", "--no-progress", "--checkpoint", path.name
    )
    err = one_paragraph(rc, err)
    assert path.name in err
    assert not any(advice in err for advice in UNSAFE_ADVICE), err
    assert not marker.exists()
    assert snapshot(in_tmp) == before


def test_a_model_file_of_another_shape_writes_nothing(in_tmp, capsys):
    from sigmatune.models.networks import make_network
    from sigmatune.study.modelfile import save_model_file

    params = {"hidden": 16, "depth": 1, "emb_dim": 8}
    save_model_file(
        in_tmp / "three-d.pt",
        net=make_network("mlp", params, (3,)),
        network="mlp",
        network_params=params,
        shape=(3,),
        parameterisation="edm",
        sigma_data=0.5,
        dataset="elsewhere",
        nimg=1,
    )
    before = snapshot(in_tmp)
    rc, err = _cli(
        capsys, "tune-sampling", "config.toml", "--no-progress", "--checkpoint", "three-d.pt"
    )
    assert "shape" in one_paragraph(rc, err)
    assert snapshot(in_tmp) == before


# ------------------------------------------------------------------ report and export


def test_report_into_a_folder_or_over_the_database_is_refused(synthetic_study, capsys):
    folder = synthetic_study.path.parent
    before = snapshot(folder)
    for output in (str(folder), str(synthetic_study.path), str(folder / "no-such" / "r.html")):
        rc, err = _cli(capsys, "report", "--storage", synthetic_study.url, "-o", output)
        one_paragraph(rc, err)
        assert snapshot(folder) == before, output


def test_an_output_name_too_long_for_the_file_system_is_one_paragraph(synthetic_study, capsys):
    folder = synthetic_study.path.parent
    before = snapshot(folder)
    for fmt, suffix in (("json", ".json"), ("diffusers", ".json"), ("k-diffusion", ".pt")):
        output = folder / ("x" * 300 + suffix)
        rc, err = _cli(
            capsys,
            "export",
            "--storage",
            synthetic_study.url,
            "--format",
            fmt,
            "--nfe",
            "5",
            "-o",
            str(output),
        )
        err = one_paragraph(rc, err)
        assert "nothing was written" in err, err
    rc, err = _cli(capsys, "report", "--storage", synthetic_study.url, "-o", str(output) + ".html")
    one_paragraph(rc, err)
    assert snapshot(folder) == before


def test_file_names_made_from_study_names_fit_every_file_system():
    """A file name may have 255 bytes: every name sigmatune makes from a study name stays
    below, for the longest names the config allows, in any script, and two names that read
    alike once made safe still give two files."""
    from types import SimpleNamespace

    from sigmatune.study.context import RunContext
    from sigmatune.study.formats import file_stem

    names = [
        "a" * MAX_NAME_LENGTH,
        "é" * MAX_NAME_LENGTH,  # 2 bytes each
        "数" * MAX_NAME_LENGTH,  # 3 bytes
        "\U00020000" * MAX_NAME_LENGTH,  # 4 bytes, and a letter (kept by safe_name)
        "exp a",
        "exp_a",
    ]
    stems = set()
    for name in names:
        for trial in (0, 9999):
            for suffix in ("-export.json", "-export.csv", "-nfe-1000.pt"):
                stem = file_stem(name, trial) + suffix
                assert len(stem.encode()) <= 200, (name[:3], len(stem.encode()))
                # atomic_write's temporary file: "." + name (shortened) + "." + random + ".tmp"
        stems.add(file_stem(name, 0))
        ctx = SimpleNamespace(artifact_dir=Path("art"), config=SimpleNamespace(name=name))
        folder = RunContext.run_dir(ctx, "0123456789abcdef")
        assert len(folder.name.encode()) <= 255
    assert len(stems) == len(names)


@pytest.mark.slow
def test_a_240_character_study_runs_exports_and_reports(tmp_path):
    """The longest names that fit Optuna and the bound: run, every export format into the
    working folder, and the report; every file name fits, every file loads."""
    name = "long-" + "n" * 235
    (tmp_path / "config.toml").write_text(_tiny(name))
    out = sigmatune(*RUN, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    out = sigmatune(
        "export", name, "--storage", "sqlite:///run.db", "--format", "k-diffusion", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    written = [
        Path(line.split("wrote ", 1)[1]) for line in out.stderr.splitlines() if "wrote " in line
    ]
    assert written and all((tmp_path / p).is_file() for p in written)
    for p in written:
        payload = torch.load(tmp_path / p, weights_only=True)
        assert payload["study"] == name and float(payload["sigmas"][-1]) == 0.0
    report = sigmatune("report", name, "--storage", "sqlite:///run.db", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    for path in tmp_path.rglob("*"):
        assert len(path.name.encode()) <= 255, path.name


def _tiny(name: str) -> str:
    from .conftest import tiny_toml  # noqa: TID252

    return tiny_toml(name=f'"{name}"', outer__outer_trials="1", inner__inner_trials="2")


# ------------------------------------------------------------------ dashboard


def _listening_socket(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    s.listen()
    return s


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        _listening_socket("::1").close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--port", "99999"), "port must be an integer in 1-65535"),
        (("--port", "0"), "port must be an integer in 1-65535"),
        (("--port", "-1"), "port must be an integer in 1-65535"),
        (("--host", "192.0.2.1", "--port", "8080"), "not an address of this machine"),
    ],
)
def test_dashboard_address_errors_are_one_paragraph(synthetic_study, capsys, args, expected):
    before = snapshot(synthetic_study.path.parent)
    rc, err = _cli(capsys, "dashboard", synthetic_study.url, *args)
    assert expected in one_paragraph(rc, err)
    assert snapshot(synthetic_study.path.parent) == before


def test_dashboard_on_a_port_in_use_is_one_paragraph(synthetic_study, capsys):
    busy = _listening_socket()
    try:
        port = busy.getsockname()[1]
        rc, err = _cli(capsys, "dashboard", synthetic_study.url, "--port", str(port))
    finally:
        busy.close()
    err = one_paragraph(rc, err)
    assert f"127.0.0.1:{port}" in err and "in use" in err and "--port" in err


def test_dashboard_listens_on_ipv6_any_address(synthetic_study):
    """``--host ::`` is IPv6's "every address": served where the machine has IPv6."""
    from sigmatune.dashboards import server as S

    if not _ipv6_available():
        with pytest.raises(S.ListenError, match="cannot listen"):
            S.make_dashboard_server(synthetic_study.storage, host="::", port=0)
        return
    with S.start(synthetic_study.storage, host="::", port=0) as server:
        assert server.base_url == f"http://[::]:{server.port}"
        url = f"http://[::1]:{server.port}/api/studies"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert b"synth" in response.read()


@pytest.mark.slow
def test_sigmatune_dashboard_host_ipv6_serves_until_stopped(synthetic_study, tmp_path):
    """The command itself: ``sigmatune dashboard --host ::`` prints its URL and serves (or,
    without IPv6, says so in one paragraph)."""
    port = _listening_socket().getsockname()[1]  # a port free a moment ago (closed by gc)
    log = tmp_path / "dashboard.log"
    proc = start(
        "dashboard", synthetic_study.url, "--host", "::", "--port", str(port), cwd=tmp_path, log=log
    )
    try:
        t0 = time.monotonic()
        while "optuna-dashboard: http" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() - t0 < 120, log.read_text()
            time.sleep(0.2)
        if not _ipv6_available():
            proc.wait(timeout=30)
            one_paragraph(proc.returncode, log.read_text())
            return
        assert f"http://[::]:{port}/dashboard" in log.read_text()
        assert "reachable from other machines" in log.read_text()
        with urllib.request.urlopen(f"http://[::1]:{port}/api/studies", timeout=30) as r:
            assert b"synth" in r.read()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


# ------------------------------------------------------------------ the scripts, end to end


@pytest.mark.slow
def test_bad_inputs_through_the_sigmatune_command(tmp_path):
    """Three of the cases above as a user meets them (a new interpreter each): the paragraph
    reaches the terminal without a traceback and nothing is written."""
    from .conftest import tiny_toml  # noqa: TID252

    (tmp_path / "config.toml").write_text(tiny_toml())
    hostile_pickle(tmp_path / "evil.pt", tmp_path / "code-ran")
    before = snapshot(tmp_path)
    for args in (
        (*RUN, "--device", _absent_device()),
        (*RUN, "--study-name", "n" * 300),
        ("tune-sampling", "config.toml", "--no-progress", "--checkpoint", "evil.pt"),
    ):
        out = sigmatune(*args, cwd=tmp_path)
        err = one_paragraph(out.returncode, out.stderr)
        assert not any(advice in err for advice in UNSAFE_ADVICE), err
        assert snapshot(tmp_path) == before, args
    assert not (tmp_path / "code-ran").exists()
