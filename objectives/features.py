"""Feature extractors for the Fréchet distance of :mod:`objectives.fid`.

Each extractor maps samples (images [B, C, H, W] or points [B, d], as the scorer prepares them:
clamped to the data set's value range, and uint8 for extractors that read saved images) to
features [B, num_features], float64. What an extractor learns from the reference set (the
classifier's weights, the random Fourier frequencies and scales) is fixed by a seed and returned
by :meth:`FeatureExtractor.cache_state`, so it is stored with the reference statistics.

- ``inception``: the 2048-d pool3 features of Inception-v3 with the 2015-12-05 weights
  (Szegedy et al. 2016; the FID network of Heusel et al. 2017), through torchmetrics'
  ``NoTrainInceptionV3`` (torch-fidelity's port, TF1-compatible bilinear resize to 299x299).
  The weights file is loaded only when its sha256 is the published one
  (:func:`verify_inception_weights`): torch-fidelity unpickles it with ``weights_only=False``.
- ``classifier``: the penultimate features of a small CNN trained once on the reference
  labels (for digits and MNIST, where Inception features are meaningless).
- ``raw``: the flattened samples.
- ``rff``: multi-scale random Fourier features of the flattened samples (Rahimi & Recht 2007)
  with bandwidths from the data's own scales, plus the standardised coordinates: a Fréchet
  distance on them sees mode widths, missing modes and far-off samples (see
  :class:`RandomFourierFeatures`).
"""

from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "EXTRACTORS",
    "INCEPTION_CONFIG_KEY",
    "INCEPTION_FILENAMES",
    "INCEPTION_SHA256",
    "INCEPTION_URL",
    "ClassifierFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "InceptionWeightsError",
    "RandomFourierFeatures",
    "RawFeatures",
    "SmallCNN",
    "UntrustedWeightsError",
    "WhitenedClassifierFeatures",
    "download_inception_weights",
    "get_extractor",
    "quantize_uint8",
    "resolve_inception_weights",
    "tensor_sha256",
    "train_classifier",
    "verify_inception_weights",
]

# torch-fidelity 0.4's release of the 2015-12-05 Inception-v3 weights (converted from the
# TensorFlow graph of the original FID code). pytorch-fid ships the same network under the
# second name; both have torchvision's Inception3 layout, so either file loads.
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILENAMES = (
    "weights-inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth",
)
INCEPTION_CONFIG_KEY = "fid_inception_weights"
# The sha256 of that file (95,628,359 bytes). Its first 8 hex digits are the ones in both file
# names, torch.hub's convention (``check_hash``); the full digest is the one published for
# torch-fidelity's release file (pytorch-fid's has the same size and digest prefix). Nothing
# else is ever unpickled as Inception weights.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(x: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    t = x.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


class FeatureExtractor(nn.Module, ABC):
    """Samples [B, *shape] -> features [B, num_features], float64.

    ``fit`` builds the extractor for a reference set; ``cache_state`` / ``from_cache_state``
    store and rebuild it; ``key_items`` names what, besides the reference data, the seed and
    the image count, its features depend on (it enters the cache key). The scorer hands every
    extractor its samples as saved (``objectives.fid.as_saved``): clamped to the data set's
    value range, and quantised to uint8 when ``reads_uint8``.
    """

    name: ClassVar[str]
    num_features: int
    batch_size: ClassVar[int] = 1000  # samples per forward when scoring on CPU
    reads_uint8: ClassVar[bool] = False  # reads images as saved files hold them (uint8)

    @classmethod
    def check(cls, reference: Tensor, labels: Tensor | None) -> None:
        """Raise ValueError when this extractor cannot work on such data."""

    @classmethod
    def key_items(cls, labels: Tensor | None, *, seed: int, weights: str | Path | None) -> dict:
        """JSON-able values the features depend on, beyond the reference data."""
        return {}

    @classmethod
    @abstractmethod
    def fit(
        cls,
        reference: Tensor,
        labels: Tensor | None,
        *,
        seed: int,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> FeatureExtractor:
        """The extractor for ``reference`` (labels: [N] int64 or None)."""

    def cache_state(self) -> dict[str, Any]:
        """Tensors and JSON-able values that rebuild this extractor (nothing by default)."""
        return {}

    @classmethod
    @abstractmethod
    def from_cache_state(
        cls, state: dict[str, Any], *, device: torch.device, weights: str | Path | None = None
    ) -> FeatureExtractor:
        """Rebuild the extractor from :meth:`cache_state`."""


# -- raw and random Fourier features -----------------------------------------------------------


class RawFeatures(FeatureExtractor):
    """The flattened samples, float64 (for 2-D toy data a Fréchet distance on these compares
    only means and covariances: pair with ``rff`` or KID)."""

    name = "raw"

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    @classmethod
    def fit(
        cls,
        reference: Tensor,
        labels: Tensor | None,
        *,
        seed: int,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> RawFeatures:
        return cls(math.prod(reference.shape[1:])).to(device)

    def cache_state(self) -> dict[str, Any]:
        return {"num_features": self.num_features}

    @classmethod
    def from_cache_state(
        cls, state: dict[str, Any], *, device: torch.device, weights: str | Path | None = None
    ) -> RawFeatures:
        return cls(int(state["num_features"])).to(device)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).double()  # [B, prod(shape)], float64


def _median_neighbour_distance(x: Tensor, k: int) -> float:
    """Median over the points of ``x`` [n, d] of the distance to their ``k``-th nearest
    distinct neighbour (duplicates skipped)."""
    d = torch.cdist(x, x)  # [n, n]
    d[d <= 0] = math.inf  # the point itself and its duplicates
    k = min(k, x.shape[0] - 1)
    return float(d.kthvalue(k, dim=1).values.median())


class RandomFourierFeatures(FeatureExtractor):
    """Multi-scale random Fourier features and the standardised coordinates:

        phi(x) = [sqrt(2/D) cos(x W_1 + b_1), ..., sqrt(2/D) cos(x W_B + b_B),
                  RAW_WEIGHT (x - m) / s],

    W_j ~ N(0, 1/ell_j^2) [d, D], b_j ~ U[0, 2 pi) (Rahimi & Recht 2007, Algorithm 1), so that
    the mean term of a Fréchet distance on phi is an estimate of the squared MMD with the sum
    of Gaussian kernels exp(-|x - y|^2 / (2 ell_j^2)) (Gretton et al. 2012), and the
    covariance term adds their second moments.

    Why several bandwidths: one kernel resolves structure at its own scale only. The median
    heuristic alone (ell ~ 0.85 on the toy ring, whose modes have std 0.1) cannot tell a
    mode of half its width, or a missing mode, from sampling noise at 1,000 samples. So the
    ``B`` bandwidths run geometrically from the median pairwise distance (the global layout:
    which modes are there, with what mass) down to the median distance to the 3rd nearest
    neighbour (the local scale: how wide each mode is), both measured on (a seeded subset
    of) the reference.

    Why the coordinates: every cosine feature is bounded, so far-off samples all score alike
    (the toy score saturated at ~1.86 from data x10 on). The coordinates, centred and scaled
    by the reference's mean ``m`` and overall std ``s``, make the distance keep growing with
    the distance of the samples; their weight ``RAW_WEIGHT`` keeps their sampling noise well
    under that of the cosine features, so the floor's spread is barely changed.
    """

    name = "rff"
    NUM_BANDWIDTHS: ClassVar[int] = 4
    FEATURES_PER_BANDWIDTH: ClassVar[int] = 64
    NEIGHBOUR_K: ClassVar[int] = 3
    SCALE_SUBSET: ClassVar[int] = 1000
    RAW_WEIGHT: ClassVar[float] = 0.3

    def __init__(
        self, W: Tensor, b: Tensor, centre: Tensor, scale: float, bandwidths: list[float]
    ) -> None:
        super().__init__()
        self.register_buffer("W", W.double())  # [d, B * D]
        self.register_buffer("b", b.double())  # [B * D]
        self.register_buffer("centre", centre.double())  # [d]
        self.scale = float(scale)
        self.bandwidths = [float(v) for v in bandwidths]
        self.num_features = int(W.shape[1] + W.shape[0])

    @classmethod
    def key_items(
        cls, labels: Tensor | None, *, seed: int, weights: str | Path | None
    ) -> dict[str, Any]:
        return {
            "num_bandwidths": cls.NUM_BANDWIDTHS,
            "features_per_bandwidth": cls.FEATURES_PER_BANDWIDTH,
            "neighbour_k": cls.NEIGHBOUR_K,
            "scale_subset": cls.SCALE_SUBSET,
            "raw_weight": cls.RAW_WEIGHT,
        }

    @classmethod
    def fit(
        cls,
        reference: Tensor,
        labels: Tensor | None,
        *,
        seed: int,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> RandomFourierFeatures:
        flat = reference.detach().reshape(reference.shape[0], -1).double().cpu()  # [N, d]
        g = torch.Generator().manual_seed(int(seed))
        subset = flat[torch.randperm(flat.shape[0], generator=g)[: cls.SCALE_SUBSET]]
        ell_max = float(torch.pdist(subset).median())
        if not ell_max > 0:
            raise ValueError(
                "rff needs reference samples that are not all equal, but the median pairwise "
                f"distance is {ell_max}"
            )
        ell_min = min(_median_neighbour_distance(subset, cls.NEIGHBOUR_K), ell_max)
        if not math.isfinite(ell_min):  # fewer distinct points than neighbours
            ell_min = ell_max
        bandwidths = torch.logspace(
            math.log10(ell_max), math.log10(ell_min), cls.NUM_BANDWIDTHS, dtype=torch.float64
        )
        D = cls.FEATURES_PER_BANDWIDTH
        W = torch.cat(
            [
                torch.randn(flat.shape[1], D, generator=g, dtype=torch.float64) / ell
                for ell in bandwidths
            ],
            dim=1,
        )
        b = 2 * math.pi * torch.rand(W.shape[1], generator=g, dtype=torch.float64)
        scale = float(flat.std())
        return cls(W, b, flat.mean(0), scale, bandwidths.tolist()).to(device)

    def cache_state(self) -> dict[str, Any]:
        return {
            "W": self.W.cpu(),
            "b": self.b.cpu(),
            "centre": self.centre.cpu(),
            "scale": self.scale,
            "bandwidths": self.bandwidths,
        }

    @classmethod
    def from_cache_state(
        cls, state: dict[str, Any], *, device: torch.device, weights: str | Path | None = None
    ) -> RandomFourierFeatures:
        return cls(state["W"], state["b"], state["centre"], state["scale"], state["bandwidths"]).to(
            device
        )

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1).to(self.W)  # [B, d], float64
        D = self.FEATURES_PER_BANDWIDTH
        waves = math.sqrt(2.0 / D) * torch.cos(flat @ self.W + self.b)  # [B, num_bw * D]
        coords = self.RAW_WEIGHT * (flat - self.centre) / self.scale  # [B, d]
        return torch.cat([waves, coords], dim=1)


# -- classifier features -----------------------------------------------------------------------


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class SmallCNN(nn.Module):
    """A small CNN classifier for C x H x W images (8x8 digits, 28x28 MNIST, 32x32): a 3x3 conv
    at full resolution, max-pooling down to <= 8 pixels, two more 3x3 convs (each conv with
    batch normalisation and ReLU) and a 2x2 average pool, then ``feature_dim`` ReLU features
    (the penultimate layer) and a linear head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        width: int = 32,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(in_channels, width)]
        size = int(image_size)
        while size > 8:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        layers += [
            _conv(width, 2 * width),
            nn.MaxPool2d(2) if size >= 4 else nn.Identity(),
            _conv(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, feature_dim),
            nn.ReLU(),
        ]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # [B, feature_dim]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))  # [B, num_classes] logits


def train_classifier(
    x: Tensor,
    labels: Tensor,
    *,
    seed: int = 0,
    steps: int = 120,
    batch_size: int = 128,
    lr: float = 5e-3,
    weight_decay: float = 1e-4,
    device: torch.device | str = "cpu",
) -> SmallCNN:
    """Train a :class:`SmallCNN` on ``x`` [N, C, H, W] in [-1, 1] and ``labels`` [N] with Adam
    and a cosine learning-rate decay for ``steps`` steps (about 9 epochs of digits, 3 of
    MNIST-5k; batch normalisation makes that enough). Deterministic for a seed
    (initialisation and batch order); the global RNG is left as it was. Returns the network
    in eval mode."""
    labels = labels.to(torch.int64).cpu()
    num_classes = int(labels.max()) + 1
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = SmallCNN(x.shape[1], num_classes, max(x.shape[2], x.shape[3]))
    net.to(device).train()
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    x_dev, y_dev = x.detach().float().to(device), labels.to(device)
    n, step = x.shape[0], 0
    batch_size = min(batch_size, n)
    while step < steps:
        perm = torch.randperm(n, generator=g).to(device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = perm[start : start + batch_size]
            loss = nn.functional.cross_entropy(net(x_dev[idx]), y_dev[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == steps:
                break
    return net.eval().requires_grad_(False)


class ClassifierFeatures(FeatureExtractor):
    """The 128 penultimate (ReLU) features of a :class:`SmallCNN` trained once on the
    reference set's labels — the analogue of Inception's pool3 features for small gray data
    sets. :meth:`logits` gives the classifier itself (for checking its accuracy)."""

    name = "classifier"
    TRAIN: ClassVar[dict[str, Any]] = {
        "steps": 120,
        "batch_size": 128,
        "lr": 5e-3,
        "weight_decay": 1e-4,
    }

    def __init__(self, net: SmallCNN, config: dict[str, int]) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.config = dict(config)  # SmallCNN's constructor arguments
        self.num_features = net.feature_dim

    @classmethod
    def check(cls, reference: Tensor, labels: Tensor | None) -> None:
        if labels is None:
            raise ValueError(
                "extractor 'classifier' trains a classifier on the data set's labels, but this "
                "data set has no labels; use extractor='raw' (or 'rff') for low-dimensional "
                "data, or 'inception' for natural RGB images"
            )
        if reference.ndim != 4:
            raise ValueError(
                "extractor 'classifier' needs images [N, C, H, W], but got reference of shape "
                f"{tuple(reference.shape)}; use extractor='rff' for points"
            )
        if labels.ndim != 1 or labels.shape[0] != reference.shape[0]:
            raise ValueError(
                f"labels must have shape [N]=[{reference.shape[0]}], but got "
                f"shape={tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or int(labels.min()) < 0:
            raise ValueError("labels must be integer class indices >= 0")
        if int(labels.max()) < 1:
            raise ValueError("extractor 'classifier' needs at least 2 classes in labels")

    @classmethod
    def key_items(
        cls, labels: Tensor | None, *, seed: int, weights: str | Path | None
    ) -> dict[str, Any]:
        return {"labels_sha256": tensor_sha256(labels.to(torch.int64)), "train": cls.TRAIN}

    @classmethod
    def fit(
        cls,
        reference: Tensor,
        labels: Tensor | None,
        *,
        seed: int,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> ClassifierFeatures:
        net = train_classifier(reference, labels, seed=seed, device=device, **cls.TRAIN)
        config = {
            "in_channels": int(reference.shape[1]),
            "num_classes": int(labels.max()) + 1,
            "image_size": int(max(reference.shape[2], reference.shape[3])),
        }
        return cls(net, config)

    def cache_state(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()},
        }

    @classmethod
    def from_cache_state(
        cls, state: dict[str, Any], *, device: torch.device, weights: str | Path | None = None
    ) -> ClassifierFeatures:
        net = SmallCNN(**state["config"])
        net.load_state_dict(state["state_dict"])
        return cls(net.to(device), state["config"])

    def logits(self, x: Tensor) -> Tensor:
        return self.net(x.float())  # [B, num_classes]

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x.float()).double()  # [B, 128], float64


class WhitenedClassifierFeatures(ClassifierFeatures):
    """:class:`ClassifierFeatures` whitened by the reference set's own feature covariance
    (centred, rotated onto its eigenvectors and each divided by its standard deviation;
    directions with eigenvalue below :data:`WHITEN_RTOL` of the largest dropped). FID on them is
    a Mahalanobis Frechet distance: every feature direction counts alike instead of the few
    of largest variance. On the 8x8 digits its floor's spread is 5% of the floor where the
    plain features' is 37% (``benchmarks.scorer_resolution``)."""

    name = "classifier-whitened"
    WHITEN_RTOL: ClassVar[float] = 1e-6

    def __init__(
        self, net: SmallCNN, config: dict[str, int], mean: Tensor, transform: Tensor
    ) -> None:
        super().__init__(net, config)
        self.register_buffer("mean", mean.double())
        self.register_buffer("transform", transform.double())
        self.num_features = int(transform.shape[1])

    @classmethod
    def key_items(
        cls, labels: Tensor | None, *, seed: int, weights: str | Path | None
    ) -> dict[str, Any]:
        items = super().key_items(labels, seed=seed, weights=weights)
        return {**items, "whitened": {"by": "reference covariance", "rtol": cls.WHITEN_RTOL}}

    @classmethod
    def fit(
        cls,
        reference: Tensor,
        labels: Tensor | None,
        *,
        seed: int,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> WhitenedClassifierFeatures:
        plain = ClassifierFeatures.fit(reference, labels, seed=seed, device=device)
        with torch.no_grad():
            feats = torch.cat(
                [
                    plain(reference[i : i + cls.batch_size].to(device)).cpu()
                    for i in range(0, reference.shape[0], cls.batch_size)
                ]
            )
        mean = feats.mean(0)
        centred = feats - mean
        cov = centred.T @ centred / (feats.shape[0] - 1)
        eigenvalues, vectors = torch.linalg.eigh(cov)
        keep = eigenvalues > cls.WHITEN_RTOL * eigenvalues.max()
        transform = vectors[:, keep] / eigenvalues[keep].sqrt()
        return cls(plain.net, plain.config, mean, transform).to(device)

    def cache_state(self) -> dict[str, Any]:
        return {**super().cache_state(), "mean": self.mean.cpu(), "transform": self.transform.cpu()}

    @classmethod
    def from_cache_state(
        cls, state: dict[str, Any], *, device: torch.device, weights: str | Path | None = None
    ) -> WhitenedClassifierFeatures:
        plain = ClassifierFeatures.from_cache_state(state, device=device)
        return cls(plain.net, plain.config, state["mean"], state["transform"]).to(device)

    def forward(self, x: Tensor) -> Tensor:
        return (super().forward(x) - self.mean) @ self.transform  # [B, K], float64


# -- Inception ---------------------------------------------------------------------------------


class InceptionWeightsError(FileNotFoundError):
    """The Inception-v3 FID weights are neither configured, nor cached, nor downloadable."""


class UntrustedWeightsError(ValueError):
    """A weights file that is not the standard Inception-v3 FID file: refused unread."""


def _weights_help() -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    torch_home = os.environ.get("TORCH_HOME")
    where = f"TORCH_HOME={torch_home}" if torch_home else "TORCH_HOME is unset"
    return (
        "The 'inception' FID extractor needs the standard Inception-v3 weights of 2015-12-05 "
        f"in the file {INCEPTION_FILENAMES[0]} (pytorch-fid's {INCEPTION_FILENAMES[1]} also "
        f"works). Either set the config key {INCEPTION_CONFIG_KEY} (Scorer(inception_weights=...))"
        f" to the file's path, or put the file in $TORCH_HOME/hub/checkpoints ({where}, so "
        f"{hub}). Get it from torch-fidelity's release: {INCEPTION_URL} . For digits or MNIST "
        "use extractor 'classifier', which needs no download."
    )


def download_inception_weights(dest: Path) -> None:
    """Download torch-fidelity's Inception-v3 FID weights to ``dest`` (torch.hub, atomic; a
    file whose sha256 is not :data:`INCEPTION_SHA256` is not kept)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(
        INCEPTION_URL, str(dest), hash_prefix=INCEPTION_SHA256, progress=False
    )


def verify_inception_weights(path: str | Path) -> Path:
    """``path`` when the file's sha256 is :data:`INCEPTION_SHA256`; otherwise
    :class:`UntrustedWeightsError`, naming the file, both digests and where to get the real
    one. Called before every load: a ``.pth`` file is a pickle, and torch-fidelity unpickles
    it in full (``weights_only=False``), so any other file could run code. The file is only
    read as bytes here, never unpickled."""
    path = Path(path)
    digest = _file_sha256(path)
    if digest != INCEPTION_SHA256:
        raise UntrustedWeightsError(
            f"refusing to load the Inception weights file {path}: its sha256 is {digest}, but "
            f"the standard 2015-12-05 FID weights ({INCEPTION_FILENAMES[0]}, also published as "
            f"pytorch-fid's {INCEPTION_FILENAMES[1]}) have sha256 {INCEPTION_SHA256}. A weights "
            "file is a pickle that can run code when it is loaded, so no other file is loaded. "
            f"Delete or replace {path} with the file from {INCEPTION_URL} (or remove it from "
            "$TORCH_HOME/hub/checkpoints, and sigmatune downloads and checks it)."
        )
    return path


def resolve_inception_weights(weights: str | Path | None = None) -> Path:
    """The Inception-v3 weights file: ``weights`` (the config key ``fid_inception_weights``)
    when given, else one of :data:`INCEPTION_FILENAMES` in ``$TORCH_HOME/hub/checkpoints``,
    else downloaded there. Raises :class:`InceptionWeightsError` naming the file, the config
    key, ``TORCH_HOME`` and the URL when none works."""
    if weights:
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        raise InceptionWeightsError(
            f"{INCEPTION_CONFIG_KEY}={str(weights)!r} is not a file. {_weights_help()}"
        )
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in INCEPTION_FILENAMES:
        if (hub / name).is_file():
            return hub / name
    dest = hub / INCEPTION_FILENAMES[0]
    try:
        download_inception_weights(dest)
    except Exception as exc:  # no network, proxy, HTTP error, read-only cache ...
        raise InceptionWeightsError(
            f"Inception weights not found and the download failed ({type(exc).__name__}: "
            f"{exc}). {_weights_help()}"
        ) from exc
    return dest


def quantize_uint8(x: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Samples in ``value_range`` -> uint8 as images are saved for FID: for [-1, 1],
    clamp(x * 127.5 + 128, 0, 255) truncated (NVlabs/edm ``generate.py``), i.e.
    (x + 1) * 127.5 rounded half up; another range is first mapped linearly onto [-1, 1]."""
    lo, hi = value_range
    scale = 255.0 / (hi - lo)
    return (x * scale + (0.5 - lo * scale)).clamp(0, 255).to(torch.uint8)


class InceptionFeatures(FeatureExtractor):
    """Inception-v3 pool3 features (2048) with the 2015-12-05 weights: torchmetrics'
    ``NoTrainInceptionV3`` — the network ``FrechetInceptionDistance(feature=2048)`` builds —
    with the TF1-compatible bilinear resize of the original FID code (``antialias=False``).
    It reads uint8 images (the scorer quantises them, :func:`quantize_uint8`); gray images are
    repeated to 3 channels. The weights file is verified (:func:`verify_inception_weights`)
    right before it is loaded."""

    name = "inception"
    batch_size = 64
    reads_uint8 = True

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as exc:  # pragma: no cover - torchmetrics is a dependency
            raise ImportError(f"extractor 'inception' needs torchmetrics: {exc}") from exc
        if not _TORCH_FIDELITY_AVAILABLE:
            raise ImportError(
                "extractor 'inception' needs torch-fidelity: pip install 'sigmatune[inception]'"
            )
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(verify_inception_weights(weights)),
            antialias=False,
        )
        self.num_features = 2048

    @classmethod
    def check(cls, reference: Tensor, labels: Tensor | None) -> None:
        if reference.ndim != 4 or reference.shape[1] not in (1, 3):
            raise ValueError(
                "extractor 'inception' needs images [N, C, H, W] with C = 1 or 3, but got "
                f"reference of shape {tuple(reference.shape)}; use extractor='rff' for points"
            )

    @classmethod
    def key_items(
        cls, labels: Tensor | None, *, seed: int, weights: str | Path | None
    ) -> dict[str, Any]:
        verify_inception_weights(resolve_inception_weights(weights))  # refused before any work
        return {"weights_sha256": INCEPTION_SHA256}

    @classmethod
    def fit(
        cls,
        reference: Tensor,
        labels: Tensor | None,
        *,
        seed: int,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> InceptionFeatures:
        return cls(resolve_inception_weights(weights)).to(device)

    @classmethod
    def from_cache_state(
        cls, state: dict[str, Any], *, device: torch.device, weights: str | Path | None = None
    ) -> InceptionFeatures:
        return cls(resolve_inception_weights(weights)).to(device)

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(
                "extractor 'inception' reads uint8 images [B, C, H, W] (as saved; the scorer "
                f"quantises them), but got dtype={images.dtype}"
            )
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images).double()  # [B, 2048], float64


EXTRACTORS: dict[str, type[FeatureExtractor]] = {
    "inception": InceptionFeatures,
    "classifier": ClassifierFeatures,
    "classifier-whitened": WhitenedClassifierFeatures,
    "raw": RawFeatures,
    "rff": RandomFourierFeatures,
}


def get_extractor(name: str) -> type[FeatureExtractor]:
    """The extractor class for a registry name; ValueError listing the valid ones."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; valid: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name]
