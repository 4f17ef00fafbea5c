"""Every module of the library imports on its own, first: no import cycle depends on the order."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import amsgrad

CORE = ("amsgrad.optimizers", "amsgrad.kernels", "amsgrad.quantization")

# In one interpreter (torch loaded once), each module is imported with every amsgrad module forgotten.
SCRIPT = """
import importlib, sys, traceback
import torch
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "amsgrad" or m.startswith("amsgrad.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
"""


def _modules() -> list[str]:
    root = Path(amsgrad.__file__).parent
    names = ["amsgrad"]
    for info in pkgutil.walk_packages([str(root)], prefix="amsgrad."):
        if info.name.startswith(CORE) or info.name in CORE:
            names.append(info.name)
    return names


def test_each_core_module_imports_first():
    names = _modules()
    assert {"amsgrad.kernels.settings", "amsgrad.quantization.step", "amsgrad.optimizers.schedules"} <= set(names)
    done = subprocess.run([sys.executable, "-c", SCRIPT, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stdout
