"""Datasets as tensors: sklearn's digits, MNIST and Fashion-MNIST (IDX files), CIFAR-10 (binary batches), 2-D toys.

Image loaders return `Images(images, labels)`: images uint8 of shape (N, C, H, W) holding u in {0, ..., 255},
labels int64 of shape (N,). Nothing downloads: files are read from a directory, and a missing file raises
FileNotFoundError saying which file, where to put it and where it comes from. Nothing is unpickled.

Pixels enter the models through the affine map

    x = PIXEL_SCALE * u + PIXEL_SHIFT = 2 u / 255 - 1,   u in {0, ..., 255} (N_BINS = 256 values),

(`images_to_float`, inverse `float_to_images`). A density p_x on x gives bits per dimension of the discrete
data u as bpd = -log2 p_x(x) / D - log2(PIXEL_SCALE) = -log2 p_x(x) / D + log2(127.5) when u is dequantized
on bins of width 1 (Theis et al. 2016; the offset used by Song et al. 2021 for their map is log2(128) = 7).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._checks import check_float_dtype, check_int

__all__ = [
    "Images",
    "N_BINS",
    "PIXEL_SCALE",
    "PIXEL_SHIFT",
    "images_to_float",
    "float_to_images",
    "load_digits",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "FASHION_MNIST_DIR",
    "load_cifar10",
    "TOY_MIXTURES",
    "toy_mixture",
    "toy_2d",
]

N_BINS = 256
PIXEL_SCALE = 2.0 / 255.0
PIXEL_SHIFT = -1.0

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_SPLITS = ("train", "test")


class Images(NamedTuple):
    """A labelled image set: images uint8 (N, C, H, W) with values 0..255, labels int64 (N,)."""

    images: Tensor
    labels: Tensor


# ---------------------------------------------------------------------------------------------- pixel map
def images_to_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """x = 2 u / 255 - 1: uint8 pixels u in {0..255} to floats in [-1, 1].

    Args:
        images: uint8 tensor of any shape, e.g. (N, C, H, W).
        dtype: floating dtype of the result.
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"images must be a uint8 tensor with values 0..255 (as the loaders return), got {got}.")
    dtype = check_float_dtype("dtype", dtype, optional=False)
    return images.to(dtype) * PIXEL_SCALE + PIXEL_SHIFT


def float_to_images(x: Tensor) -> Tensor:
    """u = round((x + 1) * 255 / 2) clamped to {0..255}: the inverse of `images_to_float`, as uint8.

    Args:
        x: floating tensor of any shape with values (ideally) in [-1, 1]; values outside are clamped and
            NaN becomes 0 (this is for viewing samples, not for computing with them).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating tensor with values in [-1, 1], got {got}.")
    u = torch.round((x.double() - PIXEL_SHIFT) / PIXEL_SCALE)
    return u.nan_to_num(0.0).clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- digits
def load_digits() -> Images:
    """The 1797 handwritten digits of scikit-learn (UCI optdigits test set), 8x8, shipped with sklearn.

    The original pixels v are counts 0..16; they are mapped to u = floor(v * 255 / 16 + 1/2) (round half up),
    so 0 -> 0 and 16 -> 255 exactly. Returns images uint8 (1797, 1, 8, 8) and labels int64 (1797,).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    v = np.asarray(bunch.images, dtype=np.int64)
    if v.min() < 0 or v.max() > 16:
        raise ValueError(f"sklearn's digits hold values outside 0..16 ({v.min()}..{v.max()}); unexpected version.")
    u = (v * 255 + 8) // 16
    images = torch.from_numpy(u.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Images(images, labels)


# ---------------------------------------------------------------------------------------------- IDX (MNIST)
# IDX type codes (LeCun's format): third byte of the magic number -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    # Detect gzip by its magic bytes, not by the name: some mirrors store raw files under .gz names.
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot decompress the gzip file ({e}); the file is damaged, fetch it again.") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip): magic 0x0000TTNN (type T, N dimensions), N big-endian uint32 sizes, data.

    LeCun, Cortes & Burges, "The MNIST database", file format section. Returns a numpy array of the
    stored shape in native byte order.

    Args:
        path: the file, e.g. train-images-idx3-ubyte or train-images-idx3-ubyte.gz.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX file (4-byte magic number).")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000TTNN with type TT in "
            f"{{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}}. Is this an IDX file (MNIST format)?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, the file has {len(data)}.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: the header announces shape {shape} of {dtype.name} ({expected} bytes in all) but the "
            f"file has {len(data)} bytes; the file is truncated or damaged."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, names: list[str], what: str, source: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"{what}: none of {names} found in {directory}. Put the file there (raw or gzip); it comes from {source}."
    )


_MNIST_SOURCE = "http://yann.lecun.com/exdb/mnist/ (mirror: https://ossci-datasets.s3.amazonaws.com/mnist/)"
_FASHION_SOURCE = (
    "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion), or the Debian/Ubuntu package "
    f"dataset-fashion-mnist which installs it in {FASHION_MNIST_DIR}"
)


def _idx_names(prefix: str, kind: str, nd: int) -> list[str]:
    # The distributed name, its gunzipped form, and the dotted form some mirrors use (train-images.idx3-ubyte).
    base, dotted = f"{prefix}-{kind}-idx{nd}-ubyte", f"{prefix}-{kind}.idx{nd}-ubyte"
    return [base + ".gz", base, dotted + ".gz", dotted]


def _load_idx_pair(root: str | Path, split: str, what: str, source: str) -> Images:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a directory path (str or Path), got {type(root).__name__}.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: directory {root} does not exist. Put the IDX files there; they come from {source}.")
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(_find(root, _idx_names(prefix, "images", 3), f"{what} {split} images", source))
    y = read_idx(_find(root, _idx_names(prefix, "labels", 1), f"{what} {split} labels", source))
    if x.ndim != 3 or x.dtype != np.uint8 or x.shape[1:] != (28, 28):
        raise ValueError(
            f"{what} {split} images: expected uint8 IDX data of shape (N, 28, 28), got {x.dtype} {x.shape}; "
            f"is this the images file of {what}?"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what} {split}: {x.shape[0]} images but labels of shape {y.shape}; the files do not match.")
    got = f"{y.dtype} data" if y.dtype != np.uint8 else f"label {y.max()}" if y.size and y.max() > 9 else None
    if got:
        raise ValueError(
            f"{what} {split} labels: expected uint8 IDX labels in 0..9, got {got}; is this the labels file of {what}?"
        )
    images = torch.from_numpy(x.copy()).unsqueeze(1)
    return Images(images, torch.from_numpy(y.astype(np.int64)))


def load_mnist(root: str | Path, split: str = "train") -> Images:
    """MNIST from its four IDX files in `root` (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...).

    Args:
        root: directory holding the files.
        split: "train" (60000 images) or "test" (10000).
    Returns images uint8 (N, 1, 28, 28), labels int64 (N,).
    """
    return _load_idx_pair(root, split, "MNIST", _MNIST_SOURCE)


def load_fashion_mnist(root: str | Path | None = None, split: str = "train") -> Images:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files; root=None looks in FASHION_MNIST_DIR.

    FASHION_MNIST_DIR is /usr/share/datasets/fashion-mnist, where `apt install dataset-fashion-mnist`
    puts train-images-idx3-ubyte.gz and the three other files.

    Args:
        root: directory holding the files, or None for FASHION_MNIST_DIR.
        split: "train" (60000 images) or "test" (10000).
    Returns images uint8 (N, 1, 28, 28), labels int64 (N,).
    """
    return _load_idx_pair(FASHION_MNIST_DIR if root is None else root, split, "Fashion-MNIST", _FASHION_SOURCE)


# ---------------------------------------------------------------------------------------------- CIFAR-10
_CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (unpack it: tar xzf cifar-10-binary.tar.gz)"
_CIFAR_RECORD = 1 + 3 * 32 * 32


def load_cifar10(root: str | Path, split: str = "train", *, records_per_batch: int = 10_000) -> Images:
    """CIFAR-10 (Krizhevsky 2009) from the binary version: records of 1 label byte and 3072 pixel bytes (R, G, B planes).

    Reads data_batch_1.bin .. data_batch_5.bin (train) or test_batch.bin (test) from `root` or from
    `root`/cifar-10-batches-bin. Never unpickles (the python version of the data set is not read).

    Args:
        root: directory holding the .bin files or the folder cifar-10-batches-bin.
        split: "train" (50000 images) or "test" (10000).
        records_per_batch: the records each batch file must hold, 10000 in the distributed files: a copy cut at a
            record boundary is refused instead of loading fewer images (a smaller count serves files of your own in
            the same format).
    Returns images uint8 (N, 3, 32, 32), labels int64 (N,) in 0..9.
    """
    records_per_batch = check_int("records_per_batch", records_per_batch, minimum=1)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a directory path (str or Path), got {type(root).__name__}.")
    root = Path(root)
    if (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    records = []
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 {split}: {path} not found. Put {names} in {root} (or its folder cifar-10-batches-bin); "
                f"they come from {_CIFAR_SOURCE}."
            )
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == 0 or data.size % _CIFAR_RECORD:
            raise ValueError(
                f"{path}: {data.size} bytes is not a positive multiple of the record size {_CIFAR_RECORD} "
                "(1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 binary batch."
            )
        if data.size != records_per_batch * _CIFAR_RECORD:
            raise ValueError(
                f"{path}: {data.size // _CIFAR_RECORD} records, but a CIFAR-10 binary batch holds {records_per_batch} "
                f"({records_per_batch * _CIFAR_RECORD} bytes); the file is truncated (cut at a record boundary) or "
                "not a batch of cifar-10-binary.tar.gz."
            )
        records.append(data.reshape(-1, _CIFAR_RECORD))
    rec = np.concatenate(records)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"CIFAR-10 {split}: label {labels.max()} outside 0..9; is this CIFAR-100 (other layout)?")
    images = torch.from_numpy(np.ascontiguousarray(rec[:, 1:]).reshape(-1, 3, 32, 32))
    return Images(images, torch.from_numpy(labels))


# ---------------------------------------------------------------------------------------------- 2-D toys
def _two_modes() -> tuple[Tensor, Tensor, Tensor]:
    # Song & Ermon (2019), sec. 3.2: p = 1/5 N((-5, -5), I) + 4/5 N((5, 5), I).
    return torch.tensor([0.2, 0.8]), torch.tensor([[-5.0, -5.0], [5.0, 5.0]]), torch.ones(2)


def _ring() -> tuple[Tensor, Tensor, Tensor]:
    # Eight equal modes on the circle of radius 2, std 0.2 (the "8 Gaussians" of the GAN literature).
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return torch.full((8,), 1 / 8), means, torch.full((8,), 0.2)


TOY_MIXTURES = {"two_modes": _two_modes, "ring": _ring}


def toy_mixture(name: str, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """Parameters of a 2-D isotropic Gaussian mixture sum_k w_k N(mu_k, s_k^2 I): weights (K,), means (K, 2), stds (K,).

    Args:
        name: a key of TOY_MIXTURES: "two_modes" (weights 0.2 / 0.8 at (-5, -5) / (5, 5), unit std;
            Song & Ermon 2019) or "ring" (8 equal modes on the circle of radius 2, std 0.2).
        dtype: floating dtype of the parameters.
    """
    if not isinstance(name, str) or name not in TOY_MIXTURES:
        raise ValueError(f"name must be one of {sorted(TOY_MIXTURES)}, got {name!r}.")
    dtype = check_float_dtype("dtype", dtype, optional=False)
    return tuple(p.to(dtype) for p in TOY_MIXTURES[name]())  # type: ignore[return-value]


def toy_2d(
    name: str, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """n samples of the 2-D mixture `toy_mixture(name)`: component k ~ Cat(w), then x = mu_k + s_k z, z ~ N(0, I).

    Args:
        name: a key of TOY_MIXTURES.
        n: number of samples.
        generator: CPU torch.Generator for reproducible samples.
        dtype: floating dtype of the samples.
    Returns a tensor (n, 2).
    """
    n = check_int("n", n, minimum=1)
    dtype = check_float_dtype("dtype", dtype, optional=False)
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise TypeError(f"generator must be a CPU torch.Generator or None, got {generator!r}.")
    weights, means, stds = toy_mixture(name, torch.float64)
    k = torch.multinomial(weights, n, replacement=True, generator=generator)
    z = torch.randn(n, 2, dtype=torch.float64, generator=generator)
    return (means[k] + stds[k, None] * z).to(dtype)
