"""Data: exact round trips of IDX and CIFAR-10 binary files, the digits map, the pixel map, the 2-D mixtures,
the errors for missing or damaged files, and the image grid figure."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdescore import data as D
from sdescore.data import (
    N_BINS,
    float_to_images,
    images_to_float,
    load_cifar10,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    toy_2d,
    toy_mixture,
)

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
          np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """An IDX file written from the format's definition: 0x0000, type byte, ndim byte, big-endian dims, data."""
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    raw = struct.pack(">HBB", 0, _CODES[big.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_mnist(root: Path, split: str, n: int, gz: bool, seed: int, dotted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    sep = "." if dotted else "-"
    suffix = ".gz" if gz else ""
    write_idx(root / f"{prefix}-images{sep}idx3-ubyte{suffix}", images, gz)
    write_idx(root / f"{prefix}-labels{sep}idx1-ubyte{suffix}", labels, gz)
    return images, labels


# ------------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_round_trips_every_type_exactly(tmp_path, gz, dtype):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) if np.dtype(dtype).kind != "u" else np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / "a.idx", a, gz))
    assert out.shape == (2, 3, 5) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    dtype=st.sampled_from([np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"]),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_read_idx_round_trips_any_shape(tmp_path_factory, shape, dtype, gz, seed):
    a = np.random.default_rng(seed).integers(-128, 128, size=shape).astype(dtype)
    path = write_idx(tmp_path_factory.mktemp("idx") / "a", a, gz)
    out = read_idx(path)
    assert out.shape == tuple(shape)
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("split, n", [("train", 5), ("test", 3)])
def test_load_mnist_returns_the_files_contents_exactly(tmp_path, gz, split, n):
    images, labels = fake_mnist(tmp_path, split, n, gz, seed=n)
    out = load_mnist(tmp_path, split)
    assert out.images.dtype == torch.uint8 and out.images.shape == (n, 1, 28, 28)
    assert out.labels.dtype == torch.int64 and out.labels.shape == (n,)
    np.testing.assert_array_equal(out.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(out.labels.numpy(), labels)


def test_load_mnist_accepts_the_dotted_names_of_some_mirrors(tmp_path):
    images, _ = fake_mnist(tmp_path, "train", 2, gz=False, seed=0, dotted=True)
    np.testing.assert_array_equal(load_mnist(tmp_path).images[:, 0].numpy(), images)


def test_gzip_is_detected_by_content_not_by_name(tmp_path):
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "raw.gz", a, gz=False)  # a raw file under a .gz name
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.gz"), a)


@pytest.mark.parametrize("at", range(10, 30, 4))
def test_a_damaged_gzip_stream_is_reported_with_the_file(tmp_path, at):
    path = write_idx(tmp_path / "d.gz", np.arange(1000, dtype=np.uint8).reshape(10, 100) % 251, gz=True)
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF  # inside the deflate stream: zlib's own error, or a CRC mismatch at the end
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"d\.gz: cannot decompress the gzip file"):
        read_idx(path)


def test_bad_magic_number_is_rejected(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 20)  # little-endian magic: not IDX
    with pytest.raises(ValueError, match="bad IDX magic number 0x08030000"):
        read_idx(path)
    path.write_bytes(struct.pack(">HBB", 0, 0x07, 1) + b"\x00" * 8)  # unknown type code
    with pytest.raises(ValueError, match="magic"):
        read_idx(path)


def test_truncated_idx_file_is_rejected(tmp_path):
    path = write_idx(tmp_path / "t", np.zeros((4, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"truncated.*\(4, 28, 28\)|\(4, 28, 28\).*truncated"):
        read_idx(path)


def test_mismatched_image_and_label_counts_are_rejected(tmp_path):
    fake_mnist(tmp_path, "train", 4, gz=True, seed=0)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), gz=True)
    with pytest.raises(ValueError, match="4 images but labels of shape"):
        load_mnist(tmp_path)


@pytest.mark.parametrize(
    "labels, match",
    [(np.array([3.0, -1.0, 2.0, 1.0], ">f4"), "float32"), (np.array([3, 10, 2, 1], np.uint8), "label 10"),
     (np.array([3, -1, 2, 1], np.int8), "int8")],
    ids=["float", "above 9", "signed"],
)
def test_mnist_labels_of_another_type_or_range_are_rejected(tmp_path, labels, match):
    fake_mnist(tmp_path, "train", 4, gz=False, seed=0)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=False)
    with pytest.raises(ValueError, match=f"labels: expected uint8 IDX labels in 0..9, got .*{match}"):
        load_mnist(tmp_path)


def test_mnist_images_of_another_size_are_rejected(tmp_path):
    fake_mnist(tmp_path, "train", 4, gz=False, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 32, 32), np.uint8), gz=False)  # CIFAR-sized
    with pytest.raises(ValueError, match=r"images: expected uint8 IDX data of shape \(N, 28, 28\), got uint8 \(4, 32, 32\)"):
        load_mnist(tmp_path)


def test_missing_mnist_file_says_which_where_and_from_where(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_mnist(tmp_path, "test")
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg and "yann.lecun.com" in msg
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")


def test_fashion_mnist_is_found_in_the_debian_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", tmp_path)
    images, labels = fake_mnist(tmp_path, "test", 3, gz=True, seed=1)
    out = load_fashion_mnist(split="test")
    np.testing.assert_array_equal(out.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(out.labels.numpy(), labels)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


@pytest.mark.skipif(not D.FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_installed_fashion_mnist_has_the_published_sizes():
    out = load_fashion_mnist(split="test")
    assert out.images.shape == (10000, 1, 28, 28)
    assert torch.equal(out.labels.bincount(), torch.full((10,), 1000))


# ------------------------------------------------------------------------------------------ CIFAR-10
def write_cifar(root: Path, name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    (root / name).write_bytes(b"".join(bytes([y]) + x.tobytes() for y, x in zip(labels, images)))
    return images, labels


@pytest.mark.parametrize("nested", [False, True])
def test_load_cifar10_returns_the_records_exactly(tmp_path, nested):
    root = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    root.mkdir(exist_ok=True)
    parts = [write_cifar(root, f"data_batch_{i}.bin", 3, seed=i) for i in range(1, 6)]
    test_images, test_labels = write_cifar(root, "test_batch.bin", 3, seed=9)
    train = load_cifar10(tmp_path, "train", records_per_batch=3)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    np.testing.assert_array_equal(train.images.numpy(), np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(train.labels.numpy(), np.concatenate([p[1] for p in parts]))
    test = load_cifar10(tmp_path, "test", records_per_batch=3)
    np.testing.assert_array_equal(test.images.numpy(), test_images)
    np.testing.assert_array_equal(test.labels.numpy(), test_labels)


def test_cifar10_damaged_or_missing_batches_are_reported(tmp_path):
    write_cifar(tmp_path, "test_batch.bin", 2, seed=0)
    (tmp_path / "test_batch.bin").write_bytes((tmp_path / "test_batch.bin").read_bytes()[:-1])
    with pytest.raises(ValueError, match="3073"):
        load_cifar10(tmp_path, "test", records_per_batch=2)
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(tmp_path, "train")
    assert "data_batch_1.bin" in str(e.value) and "cifar-10-binary.tar.gz" in str(e.value)


def test_a_cifar10_batch_cut_at_a_record_boundary_is_refused(tmp_path):
    """A distributed batch holds 10000 records: one of a single record (a copy cut at a record boundary) loaded as
    one image without complaint. Files of another size are read where their count is given."""
    write_cifar(tmp_path, "test_batch.bin", 1, seed=0)
    with pytest.raises(ValueError, match=r"test_batch\.bin: 1 records, but a CIFAR-10 binary batch holds 10000 "
                                         r"\(30730000 bytes\); the file is truncated"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(ValueError, match="1 records, but a CIFAR-10 binary batch holds 2"):
        load_cifar10(tmp_path, "test", records_per_batch=2)
    assert load_cifar10(tmp_path, "test", records_per_batch=1).images.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="records_per_batch must be >= 1"):
        load_cifar10(tmp_path, "test", records_per_batch=0)


# ------------------------------------------------------------------------------------------ digits, pixel map
def test_digits_are_8x8_uint8_with_the_documented_map():
    from sklearn.datasets import load_digits as sk

    out = load_digits()
    assert out.images.shape == (1797, 1, 8, 8) and out.images.dtype == torch.uint8
    assert out.labels.shape == (1797,) and set(out.labels.tolist()) == set(range(10))
    v = torch.from_numpy(sk().images).long()
    assert torch.equal(out.images[:, 0].long(), torch.floor(v * 255 / 16 + 0.5).long())
    assert int(out.images.min()) == 0 and int(out.images.max()) == 255


def test_pixel_map_is_affine_onto_minus_one_one_and_inverts_exactly():
    u = torch.arange(N_BINS, dtype=torch.uint8)
    x = images_to_float(u, torch.float64)
    torch.testing.assert_close(x, 2 * u.double() / 255 - 1, rtol=0, atol=1e-15)
    assert x[0] == -1 and x[-1] == 1
    assert torch.equal(float_to_images(x), u)
    assert torch.equal(float_to_images(images_to_float(u)), u)  # float32 too
    assert torch.equal(float_to_images(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        images_to_float(x)


@pytest.mark.parametrize("dtype", ["float32", torch.int64, float])
def test_images_to_float_rejects_a_dtype_that_is_not_a_floating_torch_dtype(dtype):
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        images_to_float(torch.zeros(2, dtype=torch.uint8), dtype)


# ------------------------------------------------------------------------------------------ 2-D mixtures
def test_toy_2d_is_reproducible_and_shaped():
    a = toy_2d("ring", 100, torch.Generator().manual_seed(3))
    b = toy_2d("ring", 100, torch.Generator().manual_seed(3))
    assert a.shape == (100, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    assert toy_2d("two_modes", 5, dtype=torch.float64).dtype == torch.float64


def test_two_modes_has_weights_one_fifth_and_four_fifths():
    n = 20000
    x = toy_2d("two_modes", n, torch.Generator().manual_seed(0), dtype=torch.float64)
    upper = x.sum(dim=1) > 0
    k = int(upper.sum())
    # Binomial(n, 0.8): reject at |z| > 4.5 (two-sided level 7e-6) under the null of the stated weights
    assert abs(k - 0.8 * n) < 4.5 * (n * 0.8 * 0.2) ** 0.5
    torch.testing.assert_close(x[upper].mean(0), torch.tensor([5.0, 5.0], dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(x[upper].std(0), torch.ones(2, dtype=torch.float64), atol=0.03, rtol=0)


def test_ring_modes_lie_on_the_circle_of_radius_two():
    w, mu, s = toy_mixture("ring")
    assert w.shape == (8,) and float(w.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(mu.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    x = toy_2d("ring", 4000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(x.norm(dim=1).mean()) - 2.0) < 0.05


@pytest.mark.parametrize("args, error, match", [(("moons", 5), ValueError, "two_modes"), ((["ring"], 5), ValueError, "two_modes"),
                                                (("ring", 0), ValueError, "n"),
                                                (("ring", 5, 3), TypeError, "generator")])
def test_toy_2d_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        toy_2d(*args)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float64"])
def test_toy_mixture_rejects_a_dtype_that_is_not_a_floating_torch_dtype(dtype):
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        toy_mixture("ring", dtype)


# ------------------------------------------------------------------------------------------ figures
def test_image_grid_tiles_images_and_saves_a_png(tmp_path):
    from sdescore.plotting import image_grid, plot_loss_curve, save_image_grid

    images = load_digits().images[:10]
    grid = image_grid(images, nrow=5, padding=1)
    assert grid.shape == (2 * 9 + 1, 5 * 9 + 1, 1)
    np.testing.assert_array_equal(grid[1:9, 1:9, 0], images[0, 0].numpy())
    np.testing.assert_array_equal(grid[10:18, 1 + 9 * 2 : 9 + 9 * 2, 0], images[7, 0].numpy())
    path = save_image_grid(images_to_float(images), tmp_path / "g.png", nrow=5, scale=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curve([3.0, 2.0, 1.5, 1.2], tmp_path / "l.png", smooth=2).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="C in"):
        image_grid(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
