"""The digits of the training run, vendored (elbolab/measure/data): the UCI optdigits test set as
the UCI repository describes it, read without scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from elbolab.measure.training import DIGITS_FILE, digits, digits_table

# the test set's class distribution as the UCI repository publishes it (optdigits.names, section 9)
UCI_TEST_CLASSES = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_the_file_is_the_uci_test_set():
    pixels, labels = digits_table()
    assert pixels.shape == (1797, 64) and labels.shape == (1797,)
    assert pixels.min() == 0 and pixels.max() == 16  # counts of on pixels in 4x4 blocks
    assert np.bincount(labels, minlength=10).tolist() == UCI_TEST_CLASSES
    x = digits()
    assert x.dtype == np.float64 and x.min() == 0.0 and x.max() == 1.0
    assert DIGITS_FILE.stat().st_size < 120_000


def test_it_is_what_scikit_learn_loads_where_scikit_learn_is_installed():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    pixels, labels = digits_table()
    assert np.array_equal(pixels, d.data) and np.array_equal(labels, d.target)


def test_the_licence_travels_with_the_data():
    readme = (DIGITS_FILE.parent / "README.md").read_text()
    assert "CC BY 4.0" in readme and "10.24432/C50P49" in readme and "Alpaydin" in readme


def test_loading_needs_no_scikit_learn():
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'sklearn': raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from elbolab.measure.training import digits, bias_only_loss\n"
            "print(digits().shape, round(bias_only_loss(digits()), 1))\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["(1797,", "64)"]
