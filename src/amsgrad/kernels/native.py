"""Our own single-pass CPU kernel, in C, compiled on first use and called through ``ctypes``.

torch has no kernel for AMSGrad's maximum of bias-corrected :math:`v_t` (``max_of="corrected"``),
so the package carries one: the whole update of :class:`~amsgrad.AMSGrad` and
:class:`~amsgrad.Adam`, every variant, in one pass over memory, in float32 or float64. It is
plain C (no torch headers), so it builds in about a second with the system's C compiler (``cc``,
or ``$CC``) and is cached on disk, keyed by its source, the compiler and the CPU. Without a
compiler, or with ``AMSGRAD_NATIVE=0`` in the environment, :func:`library` returns ``None`` and
the optimizers use the torch-only paths instead; nothing else changes.

The element-wise code follows :meth:`amsgrad.Adam.step_param` operation by operation: the same
order, the same scalars cast to the tensor's dtype, and a fused multiply-add exactly where
torch's CPU op has one. In float64 it usually reproduces the readable path bit for bit; the
tests allow a relative 1e-12.
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
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["library", "unavailable_reason", "NativeSettings", "adam_step", "increment_steps"]

# Weight-decay modes and maximum modes, as the C code numbers them.
DECAY_NONE, DECAY_COUPLED, DECAY_SCALE_PARAM = 0, 1, 2
MAX_NONE, MAX_RAW, MAX_CORRECTED = 0, 1, 2

C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, decay_factor, sign;
    int32_t decay_mode, max_mode, optimized_update, bias_correction, step_is_double, num_threads;
} settings_t;

/* Per-tensor numbers, from its step t (as Adam.bias_corrections and Adam.adam_update). */
typedef struct { double neg_step_size, correction2, sqrt_correction2; int32_t divide; } tensor_scalars_t;

enum { CHUNK = 8192, PARALLEL_MIN_ELEMENTS = 1 << 18 }; /* below: one thread, as torch for small tensors */

static double next_step(void *step, int32_t is_double) {
    if (is_double) { double *s = (double *)step; *s = *s + 1.0; return *s; }
    float *s = (float *)step; *s = *s + 1.0f; return (double)*s;
}

void amsgrad_increment_steps(int64_t n, void **steps, int32_t is_double, double *values) {
    for (int64_t i = 0; i < n; ++i) values[i] = next_step(steps[i], is_double);
}

static tensor_scalars_t scalars_for_step(const settings_t *s, double t) {
    double c1 = 1.0, c2 = 1.0;
    if (s->bias_correction) { c1 = 1.0 - pow(s->beta1, t); c2 = 1.0 - pow(s->beta2, t); }
    /* A maximum of corrected v_t is already corrected: the update uses 1 for 1 - beta2^t. */
    double c2_update = s->max_mode == 2 ? 1.0 : c2;
    tensor_scalars_t k;
    k.correction2 = c2;
    k.sqrt_correction2 = sqrt(c2_update);
    if (s->optimized_update) {
        k.neg_step_size = -(s->lr * sqrt(c2_update) / c1);
        k.divide = 0;
    } else {
        k.neg_step_size = -(s->lr / c1);
        k.divide = c2_update != 1.0;
    }
    return k;
}

/* One chunk of one tensor. DECAY, MAXMODE and DIVIDE are constants at every call site, so the
   compiler drops the branches and vectorizes the loop. Each line rounds as the torch op it
   stands for does on CPU (built with -ffp-contract=off; FMA exactly where torch's kernel has one):
   add(alpha) is fma(other, alpha, self), addcmul is fma(value * t1, t2, self), addcdiv is
   self + (value * t1) / t2. */
#define DEFINE_CHUNK(T, SUFFIX, SQRT, FMA)                                                        \
static inline __attribute__((always_inline)) void chunk_##SUFFIX(                            \
        T *restrict p, const T *restrict g, T *restrict m, T *restrict v, T *restrict vm,     \
        int64_t len, const settings_t *s, const tensor_scalars_t *k,                          \
        const int DECAY, const int MAXMODE, const int DIVIDE) {                               \
    const T sign = (T)s->sign, wd = (T)s->weight_decay, factor = (T)s->decay_factor;         \
    const T b1 = (T)s->beta1, b2 = (T)s->beta2;                                              \
    const T omb1 = (T)(1.0 - s->beta1), omb2 = (T)(1.0 - s->beta2);                          \
    const T c2 = (T)k->correction2, sc2 = (T)k->sqrt_correction2, eps = (T)s->eps;           \
    const T neg_ss = (T)k->neg_step_size;                                                     \
    for (int64_t i = 0; i < len; ++i) {                                                      \
        T gi = g[i] * sign;                                                                   \
        T pi = p[i];                                                                          \
        if (DECAY == 2) pi = pi * factor;                                                     \
        if (DECAY == 1) gi = FMA(pi, wd, gi);                                                 \
        T mi = FMA(gi, omb1, m[i] * b1);                                                      \
        T vi = FMA(omb2 * gi, gi, v[i] * b2);                                                 \
        m[i] = mi; v[i] = vi;                                                                 \
        T u = vi;                                                                             \
        if (MAXMODE) {                                                                        \
            T c = MAXMODE == 2 ? vi / c2 : vi;                                                \
            T a = vm[i];                                                                      \
            u = (a > c || a != a) ? a : c; /* torch.maximum: NaN wins */                      \
            vm[i] = u;                                                                        \
        }                                                                                     \
        T d = SQRT(u);                                                                        \
        if (DIVIDE) d = d / sc2;                                                              \
        d = d + eps;                                                                          \
        p[i] = pi + (neg_ss * mi) / d;                                                        \
    }                                                                                         \
}                                                                                             \
                                                                                              \
static void run_chunk_##SUFFIX(T *p, const T *g, T *m, T *v, T *vm, int64_t len,              \
                               const settings_t *s, const tensor_scalars_t *k) {              \
    switch (s->decay_mode * 6 + s->max_mode * 2 + k->divide) {                                \
        case 0: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 0, 0); break;                    \
        case 1: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 0, 1); break;                    \
        case 2: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 1, 0); break;                    \
        case 3: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 1, 1); break;                    \
        case 4: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 2, 0); break;                    \
        case 5: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 2, 1); break;                    \
        case 6: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 0, 0); break;                    \
        case 7: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 0, 1); break;                    \
        case 8: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 1, 0); break;                    \
        case 9: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 1, 1); break;                    \
        case 10: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 2, 0); break;                   \
        case 11: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 2, 1); break;                   \
        case 12: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 0, 0); break;                   \
        case 13: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 0, 1); break;                   \
        case 14: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 1, 0); break;                   \
        case 15: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 1, 1); break;                   \
        case 16: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 2, 0); break;                   \
        default: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 2, 1); break;                   \
    }                                                                                         \
}                                                                                             \
                                                                                              \
int amsgrad_adam_step_##SUFFIX(int64_t n, T **p, T **g, T **m, T **v, T **vm,                 \
                               const int64_t *numel, void **steps, const settings_t *s) {     \
    tensor_scalars_t *k = (tensor_scalars_t *)malloc(sizeof(tensor_scalars_t) * (n + 1));     \
    int64_t *first_chunk = (int64_t *)malloc(sizeof(int64_t) * (n + 1));                      \
    if (!k || !first_chunk) { free(k); free(first_chunk); return 1; }                         \
    int64_t total = 0;                                                                        \
    first_chunk[0] = 0;                                                                       \
    for (int64_t i = 0; i < n; ++i) {                                                         \
        k[i] = scalars_for_step(s, next_step(steps[i], s->step_is_double));                   \
        first_chunk[i + 1] = first_chunk[i] + (numel[i] + CHUNK - 1) / CHUNK;                 \
        total += numel[i];                                                                    \
    }                                                                                         \
    int64_t chunks = first_chunk[n];                                                          \
    _Pragma("omp parallel for schedule(static) num_threads(s->num_threads) if(total >= PARALLEL_MIN_ELEMENTS)") \
    for (int64_t c = 0; c < chunks; ++c) {                                                    \
        int64_t lo = 0, hi = n; /* the tensor i with first_chunk[i] <= c < first_chunk[i+1] */ \
        while (hi - lo > 1) { int64_t mid = (lo + hi) / 2; if (first_chunk[mid] <= c) lo = mid; else hi = mid; } \
        int64_t start = (c - first_chunk[lo]) * CHUNK;                                        \
        int64_t len = numel[lo] - start < CHUNK ? numel[lo] - start : CHUNK;                  \
        T *vmax = vm ? vm[lo] + start : 0;                                                    \
        run_chunk_##SUFFIX(p[lo] + start, g[lo] + start, m[lo] + start, v[lo] + start, vmax,  \
                           len, s, &k[lo]);                                                   \
    }                                                                                         \
    free(k); free(first_chunk);                                                               \
    return 0;                                                                                 \
}

DEFINE_CHUNK(float, f32, sqrtf, fmaf)
DEFINE_CHUNK(double, f64, sqrt, fma)
"""


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
    # -march=native code runs only on this CPU model: the cache key includes its flags.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features", "model name")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Always; then the first of these that the compiler accepts (best first: OpenMP threads and
# this CPU's full vector width, then less).
_FLAGS = (
    ["-O3", "-fno-math-errno", "-ffp-contract=off"],
    (["-march=native", "-mprefer-vector-width=512", "-fopenmp"], ["-march=native", "-fopenmp"], ["-fopenmp"],
     ["-march=native"], []),
)


def _build() -> Path:
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([C_SOURCE, repr(_FLAGS), compiler, version, _cpu_signature()]).encode()).hexdigest()[:16]
    directory = _cache_dir()
    target = directory / f"adam_step_{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        source = Path(scratch) / "adam_step.c"
        source.write_text(C_SOURCE)
        output = Path(scratch) / target.name
        base = [compiler, *_FLAGS[0], "-shared", "-fPIC", str(source), "-o", str(output), "-lm"]
        errors = []
        for extra in _FLAGS[1]:
            result = subprocess.run(base[:1] + extra + base[1:], capture_output=True, text=True, timeout=120)
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

