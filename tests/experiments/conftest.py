"""Running the ``amsgrad`` command in a subprocess, in a scratch working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# The interpreter running the tests has the package installed; `-m amsgrad.cli` is the
# same entry point as the `amsgrad` script.
COMMAND = [sys.executable, "-m", "amsgrad.cli"]


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any MLflow configuration of the machine running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(extra)
    return env


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run ``amsgrad ARGS`` in ``tmp_path`` (so its mlflow.db and runs/ land there)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Completed:
        done = subprocess.run(
            [*COMMAND, *args],
            cwd=tmp_path,
            env=env if env is not None else clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Completed(done.returncode, done.stdout, done.stderr)

    return run
