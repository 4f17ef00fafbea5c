"""``python -m benchmarks [NAME] [OPTIONS]``: run one benchmark, or (no NAME) all of them.

Each benchmark is a module of this package with a ``main(argv)`` function; options after NAME
go to it (``python -m benchmarks optimizer_step --help``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

#: Benchmarks run by default, in order; one whose module is missing is skipped.
BENCHMARKS = ["optimizer_step", "compiled_step", "low_memory", "low_memory_training", "quantization_maps", "synthetic",
              "sweep", "train_step"]


def _load(name: str):
    if importlib.util.find_spec(f"{__package__}.{name}") is None:
        return None
    module = importlib.import_module(f"{__package__}.{name}")
    return getattr(module, "main", None)


def main(argv: list[str]) -> int:
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        entry = _load(name)
        if entry is None:
            print(f"python -m benchmarks: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})",
                  file=sys.stderr)
            return 2
        return _status(entry(rest))
    if argv:
        print("usage: python -m benchmarks [NAME [OPTIONS]]", file=sys.stderr)
        return 2
    status = 0
    for name in BENCHMARKS:
        entry = _load(name)
        if entry is not None:
            print(f"== {name} ==", flush=True)
            status = status or _status(entry([]))
            print()
    return status


def _status(result) -> int:
    """A benchmark's ``main`` may return an exit status; ``None`` means success."""
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
