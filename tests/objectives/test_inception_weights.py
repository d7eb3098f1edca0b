"""The Inception weights file is verified before it is loaded (issue 15, item 5).

torch-fidelity unpickles the weights file in full (``weights_only=False``), so a crafted file
would run code. The scorer compares the file's sha256 with the published digest of the
standard 2015-12-05 weights first and refuses anything else, without unpickling it. The
hostile files here are built by the tests: pickles that create a marker file when loaded."""

from __future__ import annotations

import re

import pytest
import torch

import sigmatune.objectives.features as features
from sigmatune.objectives.fid import Scorer, ScorerSettings

IMAGES = {"dataset_name": "digits", "value_range": (-1.0, 1.0)}


class _Payload:
    """Unpickling this creates ``marker``: what a crafted weights file could do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def hostile_file(path, marker) -> None:
    torch.save({"Conv2d_1a_3x3.conv.weight": _Payload(str(marker))}, path)


@pytest.fixture()
def no_unpickling(monkeypatch):
    """Records every torch.load; none may touch the hostile file."""
    loaded = []
    original = torch.load

    def recording(f, *args, **kwargs):
        loaded.append(str(f))
        return original(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    return loaded


def test_the_payload_would_run_code_if_loaded(tmp_path):
    hostile_file(tmp_path / "w.pth", tmp_path / "ran")
    torch.load(tmp_path / "w.pth", weights_only=False)  # what torch-fidelity does
    assert (tmp_path / "ran").exists()


def test_a_configured_weights_file_that_is_not_the_standard_one_is_refused_unread(
    tmp_path, no_unpickling
):
    weights, marker = tmp_path / "weights.pth", tmp_path / "code-ran"
    hostile_file(weights, marker)
    digest = features._file_sha256(weights)
    settings = ScorerSettings("inception", 4, inception_weights=str(weights))
    with pytest.raises(features.UntrustedWeightsError) as info:
        Scorer(torch.zeros(4, 1, 8, 8), None, settings, cache_dir=tmp_path / "cache", **IMAGES)
    message = str(info.value)
    for part in (str(weights), digest, features.INCEPTION_SHA256, features.INCEPTION_URL):
        assert part in message, part
    assert "weights_only=False" not in message
    assert not marker.exists()
    assert str(weights) not in no_unpickling
    with pytest.raises(features.UntrustedWeightsError):  # the extractor itself checks too
        features.InceptionFeatures(weights)
    assert not marker.exists()


def test_a_weights_file_in_torch_home_that_is_not_the_standard_one_is_refused_unread(
    tmp_path, monkeypatch, no_unpickling
):
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    weights, marker = checkpoints / features.INCEPTION_FILENAMES[0], tmp_path / "code-ran"
    hostile_file(weights, marker)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(features.UntrustedWeightsError, match=re.escape(str(weights))):
        Scorer(torch.zeros(4, 1, 8, 8), None, ScorerSettings("inception", 4), **IMAGES)
    assert not marker.exists() and str(weights) not in no_unpickling


def test_a_truncated_download_is_refused_too(tmp_path):
    weights = tmp_path / features.INCEPTION_FILENAMES[1]
    weights.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(features.UntrustedWeightsError, match="its sha256 is [0-9a-f]{64}"):
        features.verify_inception_weights(weights)


def test_only_the_published_digest_passes(tmp_path, monkeypatch):
    digest = features.INCEPTION_SHA256
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # torch.hub's convention: the hex in the file names is the start of the sha256
    for name in (*features.INCEPTION_FILENAMES, features.INCEPTION_URL):
        assert re.search(r"-([0-9a-f]{8})\.pth$", name).group(1) == digest[:8]
    benign = tmp_path / "benign.pth"
    torch.save({"w": torch.zeros(2)}, benign)
    with pytest.raises(features.UntrustedWeightsError):
        features.verify_inception_weights(benign)
    monkeypatch.setattr(features, "INCEPTION_SHA256", features._file_sha256(benign))
    assert features.verify_inception_weights(benign) == benign


def test_the_download_is_checked_against_the_digest(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    features.download_inception_weights(tmp_path / "w.pth")
    assert calls == [(features.INCEPTION_URL, str(tmp_path / "w.pth"), features.INCEPTION_SHA256)]
