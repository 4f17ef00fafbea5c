"""Small data files in the real formats, written here byte by byte (not by the code under test)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    array = np.ascontiguousarray(array)
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(">u1" if type_code == 0x08 else array.dtype).tobytes()


def write_mnist(folder: Path, train: int = 300, test: int = 60, seed: int = 0, gz: bool = True, learnable: bool = False) -> dict[str, np.ndarray]:
    """MNIST's four files in ``folder``; ``learnable``: each class is a bright band of rows."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 64, (n, 28, 28)).astype(np.uint8)
        if learnable:
            for i, label in enumerate(labels):
                images[i, 2 * label : 2 * label + 3] = 255
        arrays[f"{split}-images"], arrays[f"{split}-labels"] = images, labels
    folder.mkdir(parents=True, exist_ok=True)
    for name, stem in (("train-images", "train-images-idx3-ubyte"), ("train-labels", "train-labels-idx1-ubyte"), ("t10k-images", "t10k-images-idx3-ubyte"), ("t10k-labels", "t10k-labels-idx1-ubyte")):
        raw = idx_bytes(arrays[name])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"batch",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [b"x.png"] * n,
    }


def write_cifar10(folder: Path, per_batch: int = 20, test: int = 30) -> Path:
    """``folder/cifar-10-batches-py`` with five training batches and a test batch (protocol 2)."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        with (batches / f"data_batch_{i}").open("wb") as handle:
            pickle.dump(cifar_batch(per_batch, i), handle, protocol=2)
    with (batches / "test_batch").open("wb") as handle:
        pickle.dump(cifar_batch(test, 0), handle, protocol=2)
    return batches
