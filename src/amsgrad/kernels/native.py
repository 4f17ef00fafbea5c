"""Our own single-pass CPU kernels, in C, compiled on first use and called through ``ctypes``.

torch has no kernel for AMSGrad's maximum of bias-corrected :math:`v_t` (``max_of="corrected"``),
so the package carries one: the whole update of :class:`~amsgrad.AMSGrad` and
:class:`~amsgrad.Adam`, every variant, in one pass over memory, in float32 or float64
(``csrc/adam_step.c``), and the same with low-memory state or bfloat16 parameters
(``csrc/compressed_step.c``, the numbers of :mod:`amsgrad.quantization.step`). The sources are
plain C files shipped with the package (no torch headers), so they build in a few seconds with
the system's C compiler (``cc``, or ``$CC``); the result is cached on disk, keyed by the sources,
the flags, the compiler and the CPU. Without a compiler, or with ``AMSGRAD_NATIVE=0`` in the
environment, :func:`library` returns ``None`` and the optimizers use the torch-only paths
instead; nothing else changes. ``AMSGRAD_NATIVE_FLAGS`` replaces the target flags that are
otherwise tried in turn (``-march=native ... -fopenmp``), e.g. ``"-mavx2 -mfma -fopenmp"``
(the compressed kernel's AVX2 steps) or ``"-march=native -fopenmp -DAMSGRAD_PLAIN_LOOPS"`` (its
plain C loops for every block, instead of the AVX-512 or AVX2 steps of ``csrc/steps_*.h``).

The float32/float64 code follows :meth:`amsgrad.Adam.step_param` operation by operation: the
same order, the same scalars cast to the tensor's dtype, and a fused multiply-add exactly where
torch's CPU op has one. In float64 it usually reproduces the readable path bit for bit; the
tests allow a relative 1e-12. The compressed kernel reproduces its reference bit for bit.
"""

from __future__ import annotations

import array
import ctypes
import functools
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["library", "unavailable_reason", "NativeSettings", "NativeLayout", "adam_step", "compressed_step",
           "increment_steps"]

# Weight-decay modes and maximum modes, as the C code numbers them.
DECAY_NONE, DECAY_COUPLED, DECAY_SCALE_PARAM = 0, 1, 2
MAX_NONE, MAX_RAW, MAX_CORRECTED = 0, 1, 2

#: The C sources, package data beside this module (``csrc/``); ``codes_generated.h`` is written at build time.
SOURCE_DIR = "csrc"
SOURCES = ("adam_step.c", "compressed_step.c")
HEADERS = ("step_common.h", "steps_avx512.h", "steps_avx2.h", "steps_vector.h")
GENERATED_HEADER = "codes_generated.h"

# Storage kinds of the compressed kernel, as compressed_step.c numbers them.
STATE_F32, STATE_BF16_NEAREST, STATE_BF16, STATE_INT8, STATE_INT4 = 0, 1, 2, 3, 4
PARAM_F32, PARAM_BF16 = 0, 1


def _source_files() -> dict[str, str]:
    """The kernel sources by file name, with the header generated from the Python code maps."""
    from ..quantization.codes import c_header
    from ..quantization.formats import INT4, INT8

    folder = resources.files(__package__).joinpath(SOURCE_DIR)
    files = {name: folder.joinpath(name).read_text(encoding="utf-8") for name in SOURCES + HEADERS}
    files[GENERATED_HEADER] = c_header({"m8": INT8.exp_avg, "v8": INT8.exp_avg_sq,
                                        "m4": INT4.exp_avg, "v4": INT4.exp_avg_sq})
    return files



class NativeSettings(ctypes.Structure):
    """The C ``settings_t``: one param group's settings, for one call."""

    _fields_ = [
        ("lr", ctypes.c_double),
        ("beta1", ctypes.c_double),
        ("beta2", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("decay_factor", ctypes.c_double),
        ("sign", ctypes.c_double),
        ("decay_mode", ctypes.c_int32),
        ("max_mode", ctypes.c_int32),
        ("optimized_update", ctypes.c_int32),
        ("bias_correction", ctypes.c_int32),
        ("step_is_double", ctypes.c_int32),
        ("num_threads", ctypes.c_int32),
    ]


class NativeLayout(ctypes.Structure):
    """The C ``layout_t``: how the parameters and the moments of one call are stored."""

    _fields_ = [
        ("param_kind", ctypes.c_int32),
        ("state_kind", ctypes.c_int32),
        ("stochastic_param", ctypes.c_int32),
    ]


_FAILURE: list[str] = []


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None`` (``None`` when it is available or not tried yet)."""
    return _FAILURE[0] if _FAILURE else None


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; ``None`` where it cannot be had."""
    if os.environ.get("AMSGRAD_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _FAILURE.append("disabled by AMSGRAD_NATIVE=0")
        return None
    if sys.platform == "win32":
        _FAILURE.append("not built on Windows")
        return None
    try:
        path = _build()
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _FAILURE.append(f"the C kernel could not be built or loaded: {error}")
        return None
    for name in ("amsgrad_adam_step_f32", "amsgrad_adam_step_f64"):
        function = getattr(lib, name)
        function.restype = ctypes.c_int
        # Addresses of pointer tables (params, grads, exp_avgs, exp_avg_sqs, max or NULL), numels, steps.
        function.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 7 + [ctypes.POINTER(NativeSettings)]
    lib.amsgrad_compressed_step.restype = ctypes.c_int
    # n, pointer tables (params, grads, 3 moments, 3 scales), numels, steps, seeds, settings, layout.
    lib.amsgrad_compressed_step.argtypes = ([ctypes.c_int64] + [ctypes.c_void_p] * 11
                                            + [ctypes.POINTER(NativeSettings), ctypes.POINTER(NativeLayout)])
    lib.amsgrad_increment_steps.restype = None
    lib.amsgrad_increment_steps.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32,
                                            ctypes.POINTER(ctypes.c_double)]
    return lib


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    return compiler


def _cache_dir() -> Path:
    root = os.environ.get("AMSGRAD_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "amsgrad" / "kernels"


def _cpu_signature() -> str:
    """The first CPU's model name and feature flags (``/proc/cpuinfo``), else what ``platform`` says.

    -march=native code runs only on a CPU with the same features: the build's cache key includes
    them, so that a cache shared between machines of one model name never hands an AVX-512 build
    to an AVX2 machine."""
    lines: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if not line.strip():  # the end of the first processor's block
                    break
                name = line.split(":", 1)[0].strip()
                if name in ("model name", "flags", "Features"):
                    lines.setdefault(name, line.strip())
    except OSError:
        pass
    return "\n".join(lines.values()) or platform.processor() or platform.machine()


# Always; then the first of these that the compiler accepts (best first: OpenMP threads and
# this CPU's full vector width, then less).
_FLAGS = (
    ["-O3", "-fno-math-errno", "-ffp-contract=off"],
    (["-march=native", "-mprefer-vector-width=512", "-fopenmp"], ["-march=native", "-fopenmp"], ["-fopenmp"],
     ["-march=native"], []),
)


def _target_flags() -> tuple[list[str], ...]:
    override = os.environ.get("AMSGRAD_NATIVE_FLAGS")
    return (override.split(),) if override is not None else _FLAGS[1]


def _build() -> Path:
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    files = _source_files()
    targets = _target_flags()
    key_text = "\0".join([*(f"{name}\0{text}" for name, text in sorted(files.items())), repr(_FLAGS[0]),
                          repr(targets), compiler, version, _cpu_signature()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    directory = _cache_dir()
    target = directory / f"adam_step_{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        for name, text in files.items():
            (Path(scratch) / name).write_text(text, encoding="utf-8")
        output = Path(scratch) / target.name
        sources = [str(Path(scratch) / name) for name in SOURCES]
        base = [compiler, *_FLAGS[0], "-shared", "-fPIC", "-I", scratch, *sources, "-o", str(output), "-lm"]
        errors = []
        for extra in targets:
            result = subprocess.run(base[:1] + extra + base[1:], capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                break
            errors.append(result.stderr.strip().splitlines()[-1:] or [""])
        else:
            raise RuntimeError(f"{compiler} failed: {errors[0][0]}")
        os.replace(output, target)  # atomic: concurrent builders each write their own scratch file
    return target


def increment_steps(lib: ctypes.CDLL, steps: Sequence[torch.Tensor], is_double: bool) -> list[float]:
    """Add 1 to every (CPU, 0-d) step tensor in one call; return the new values."""
    n = len(steps)
    values = (ctypes.c_double * n)()
    table = array.array("Q", map(_data_ptr, steps))
    lib.amsgrad_increment_steps(n, table.buffer_info()[0], int(is_double), values)
    return list(values)


def adam_step(
    lib: ctypes.CDLL,
    dtype: torch.dtype,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor] | None,
    steps: Sequence[torch.Tensor],
    settings: NativeSettings,
) -> None:
    """One step of contiguous CPU tensors of ``dtype`` (float32 or float64); increments ``steps``."""
    n = len(params)
    function = lib.amsgrad_adam_step_f32 if dtype == torch.float32 else lib.amsgrad_adam_step_f64
    roles = [params, grads, exp_avgs, exp_avg_sqs, steps] + ([max_exp_avg_sqs] if max_exp_avg_sqs is not None else [])
    # One table of addresses, role after role: building it is most of this call's cost.
    table = array.array("Q", map(_data_ptr, itertools.chain.from_iterable(roles)))
    numel = array.array("q", map(_numel, params))
    base, size = table.buffer_info()[0], table.itemsize * n
    maxima = base + 5 * size if max_exp_avg_sqs is not None else None
    status = function(n, base, base + size, base + 2 * size, base + 3 * size, maxima, numel.buffer_info()[0],
                      base + 4 * size, ctypes.byref(settings))
    if status:
        raise MemoryError("the native AMSGrad kernel could not allocate its work list")


_data_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel



def compressed_step(
    lib: ctypes.CDLL,
    layout: NativeLayout,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    moments: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[Sequence[torch.Tensor]] | None,
    steps: Sequence[torch.Tensor],
    seeds: Sequence[int] | None,
    settings: NativeSettings,
) -> None:
    """One step of contiguous CPU tensors stored as ``layout`` says; increments ``steps``.

    ``moments`` holds the lists (exp_avgs, exp_avg_sqs[, max_exp_avg_sqs]): float tensors, or
    uint8 codes of a block format, whose float32 ``scales`` come in lists of the same order.
    """
    n = len(params)
    roles = [params, grads, *moments, steps] + (list(scales) if scales is not None else [])
    table = array.array("Q", map(_data_ptr, itertools.chain.from_iterable(roles)))
    numel = array.array("q", map(_numel, params))
    base, size = table.buffer_info()[0], table.itemsize * n
    address = [base + i * size for i in range(len(roles))]
    amsgrad = len(moments) == 3
    p, g, m, v = address[:4]
    vm = address[4] if amsgrad else None
    step_table = address[4 + amsgrad]
    ms = vs = vms = None
    if scales is not None:
        ms, vs = address[5 + amsgrad], address[6 + amsgrad]
        vms = address[7 + amsgrad] if amsgrad else None
    seed_table = array.array("q", seeds) if seeds is not None else None
    status = lib.amsgrad_compressed_step(n, p, g, m, v, vm, ms, vs, vms, numel.buffer_info()[0], step_table,
                                         seed_table.buffer_info()[0] if seed_table is not None else None,
                                         ctypes.byref(settings), ctypes.byref(layout))
    if status:
        raise MemoryError("the native compressed kernel could not allocate its work list")
