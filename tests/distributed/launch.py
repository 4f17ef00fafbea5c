"""Start a small gloo job on 127.0.0.1: one Python process per rank, as ``torchrun`` would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import amsgrad

REPO = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = str(Path(amsgrad.__file__).resolve().parents[1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], world_size: int = 2, timeout: float = 90.0) -> list[str]:
    """Run ``command`` once per rank with torchrun's environment; return each rank's output.

    Raises ``AssertionError`` with every rank's output when a rank fails or the job hangs.
    """
    port = free_port()
    processes = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "OMP_NUM_THREADS": "1",
            # The ranks import this checkout and the same amsgrad as the test process.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), PACKAGE_ROOT, os.environ.get("PYTHONPATH")])),
        }
        processes.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs, failed = [], False
    for process in processes:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            output, _ = process.communicate()
            output += f"\n[timed out after {timeout}s]"
        outputs.append(output)
        failed |= process.returncode != 0
    if failed:
        report = "\n".join(f"--- rank {rank} (exit {p.returncode}) ---\n{out}" for rank, (p, out) in
                           enumerate(zip(processes, outputs)))
        raise AssertionError(f"distributed job {command} failed:\n{report}")
    return outputs


def run_scenario(name: str, out_dir: Path, *args: str, world_size: int = 2) -> list[str]:
    """Run ``tests/distributed/workers.py``'s scenario ``name``, writing results into ``out_dir``."""
    return launch([sys.executable, "-m", "tests.distributed.workers", name, str(out_dir), *args], world_size)
