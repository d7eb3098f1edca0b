"""The ``inception`` extractor without the real weights: a weights file of the right
architecture with random values, loaded through the configured path and through
``$TORCH_HOME/hub/checkpoints``, checked against torch-fidelity's own network (images clamped
and quantised to uint8 first, as saved); and the error when there is no file and no download.
Nothing here touches the network.

Only a file with the published sha256 is ever loaded (see test_inception_weights.py); here the
random test file's own digest stands in for it."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import sigmatune.objectives.features as features
from sigmatune.objectives.fid import Scorer, ScorerSettings

tf_inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt at a download fails here, loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)


class _Unloaded(tf_inception.FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3, kept at its random initialisation (its constructor
    loads weights; this class ignores what it is given)."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A state dict of torch-fidelity's Inception-v3 with random (He-normal) conv weights, so
    that the pool3 features are O(0.1) rather than vanishing."""
    original = tf_inception.load_state_dict_from_url
    tf_inception.load_state_dict_from_url = lambda *args, **kwargs: {}
    try:
        net = _Unloaded("random-inception", ["2048"])
    finally:
        tf_inception.load_state_dict_from_url = original
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5, generator=g)
    path = tmp_path_factory.mktemp("weights") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module", autouse=True)
def trusted(weights_file):
    """The test weights' digest in place of the published one, for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "INCEPTION_SHA256", features._file_sha256(weights_file))
        yield


IMAGES = {"dataset_name": "digits", "value_range": (-1.0, 1.0)}  # as models.data declares


def tf_features(weights_file, x: torch.Tensor) -> np.ndarray:
    """Pool3 features by torch-fidelity's network itself, of the images quantised here as the
    standard protocol does: clamp to [-1, 1], round((x + 1) * 127.5), gray -> RGB."""
    net = tf_inception.FeatureExtractorInceptionV3(
        "reference", ["2048"], feature_extractor_weights_path=str(weights_file)
    )
    x = np.clip(x.double().numpy(), -1.0, 1.0)
    u8 = np.clip(np.floor((x + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)
    with torch.no_grad():
        (f,) = net(torch.from_numpy(np.repeat(u8, 3, axis=1)))
    return f.double().numpy()


@pytest.fixture(scope="module")
def images():
    """4 reference and 4 generated gray 8x8 digits in [-1, 1] (their values k/8 - 1 make the
    uint8 quantisation exact: (x + 1) * 127.5 = k * 15.9375, + 0.5 rounds it)."""
    x = torch.from_numpy(load_digits().images[:8]).float().reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return x[:4], x[4:]


@pytest.fixture(scope="module")
def expected_features(weights_file, images):
    f = tf_features(weights_file, torch.cat(images))
    return f[:4], f[4:]


def fd_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of few samples in many dimensions, in sample space: with centred
    A, B [n, d] and S = A'A/(n-1), tr (S_a S_b)^{1/2} is the nuclear norm of A B'/(n-1)."""
    A, B = a - a.mean(0), b - b.mean(0)
    n_a, n_b = len(a) - 1, len(b) - 1
    nuclear = np.linalg.svd(A @ B.T / np.sqrt(n_a * n_b), compute_uv=False).sum()
    return float(
        ((a.mean(0) - b.mean(0)) ** 2).sum() + (A**2).sum() / n_a + (B**2).sum() / n_b - 2 * nuclear
    )


@pytest.fixture(scope="module")
def path_scorer(weights_file, images, tmp_path_factory):
    ref, _ = images
    settings = ScorerSettings("inception", 4, inception_weights=str(weights_file))
    return Scorer(ref, None, settings, cache_dir=tmp_path_factory.mktemp("cache"), **IMAGES)


def test_inception_weights_from_the_configured_path(path_scorer, images, expected_features):
    f_ref, f_gen = expected_features
    assert np.abs(f_ref).mean() > 1e-3  # the random network is not degenerate
    np.testing.assert_allclose(path_scorer.features(images[1]).numpy(), f_gen, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(path_scorer.reference_stats[0], f_ref.mean(0), rtol=1e-5, atol=1e-7)


def test_inception_sees_images_clamped_and_quantised_as_saved(path_scorer, images, weights_file):
    bright = 1.7 * images[1] + 0.3  # beyond the pixel range: saved, it is clamped first
    assert bright.max() > 1 and bright.min() < -1
    np.testing.assert_allclose(
        path_scorer.features(bright).numpy(),
        tf_features(weights_file, bright),
        rtol=1e-5,
        atol=1e-7,
    )
    with pytest.raises(ValueError, match="reads uint8 images"):
        path_scorer.extractor(images[1])  # the scorer's prepare() is the one way in


@pytest.mark.slow  # two 2048-d eigendecompositions and the network on CPU: ~4 s
def test_inception_fid_equals_the_fd_of_torch_fidelity_features(
    path_scorer, images, expected_features
):
    fid = path_scorer.score_tensor(images[1])
    assert fid > 0
    assert fid == pytest.approx(fd_low_rank(*expected_features), rel=1e-4)


@pytest.mark.parametrize("filename", features.INCEPTION_FILENAMES)
def test_inception_weights_from_torch_home(
    weights_file, images, expected_features, tmp_path, monkeypatch, filename
):
    ref, gen = images
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / filename).write_bytes(weights_file.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert features.resolve_inception_weights(None) == checkpoints / filename
    scorer = Scorer(
        ref, None, ScorerSettings("inception", 4), cache_dir=tmp_path / "cache", **IMAGES
    )
    np.testing.assert_allclose(
        scorer.features(gen).numpy(), expected_features[1], rtol=1e-5, atol=1e-7
    )


def test_missing_weights_and_failed_download_name_file_key_torch_home_and_url(
    tmp_path, monkeypatch, images
):
    ref, _ = images
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    tried = []

    def offline(dest):
        tried.append(dest)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(features, "download_inception_weights", offline)
    with pytest.raises(FileNotFoundError) as info:
        Scorer(ref, None, ScorerSettings("inception", 4), cache_dir=tmp_path, **IMAGES)
    message = str(info.value)
    assert isinstance(info.value, features.InceptionWeightsError)
    assert tried == [
        tmp_path
        / "empty-torch-home"
        / "hub"
        / "checkpoints"
        / "weights-inception-2015-12-05-6726825d.pth"
    ]
    for part in (
        "weights-inception-2015-12-05-6726825d.pth",
        "pt_inception-2015-12-05-6726825d.pth",
        "fid_inception_weights",
        "TORCH_HOME",
        str(tmp_path / "empty-torch-home"),
        "no network",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
    ):
        assert part in message, part

    # a configured path that does not exist is an error at once, without a download
    tried.clear()
    with pytest.raises(FileNotFoundError, match="fid_inception_weights='/nowhere/w.pth' is not a"):
        settings = ScorerSettings("inception", 4, inception_weights="/nowhere/w.pth")
        Scorer(ref, None, settings, cache_dir=tmp_path, **IMAGES)
    assert tried == []


def test_inception_needs_one_or_three_channel_images():
    with pytest.raises(ValueError, match="C = 1 or 3.*rff"):
        Scorer(torch.zeros(4, 2), None, ScorerSettings("inception", 4), **IMAGES)


def test_quantize_uint8_is_the_standard_rounding():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 2.0])
    expected = np.clip(np.floor((x.double().numpy() + 1) * 127.5 + 0.5), 0, 255)
    assert features.quantize_uint8(x).tolist() == expected.astype(int).tolist()
    assert features.quantize_uint8(x).dtype == torch.uint8
    # another range is mapped onto [-1, 1] first: [0, 1] -> round(x * 255)
    y = torch.tensor([0.0, 0.5 / 255, 0.2, 1.0])
    assert features.quantize_uint8(y, (0.0, 1.0)).tolist() == [0, 1, 51, 255]
