"""The package's public names: each is what it says, however the modules were imported."""

from __future__ import annotations

import subprocess
import sys

from amsgrad import experiments


def test_every_public_name_is_the_object_not_a_module():
    import amsgrad.experiments.simulate  # noqa: F401 - binds the submodule on the package
    from amsgrad.experiments import simulate

    assert callable(simulate) and simulate.__module__ == "amsgrad.experiments.simulate"
    for name in experiments.__all__:
        assert not isinstance(getattr(experiments, name), type(sys)), name


def test_the_recording_process_and_the_command_line_import_only_what_they_need():
    code = (
        "import sys\n"
        "import amsgrad.experiments.recorder, amsgrad.cli\n"
        "print(sorted(m for m in ('torch', 'numba', 'matplotlib', 'mlflow') if m in sys.modules))\n"
        "amsgrad.cli.build_parser()  # every subcommand's choices and defaults\n"
        "print(sorted(m for m in ('torch', 'matplotlib', 'mlflow', 'distributed') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]  # the synthetic experiments never need torch
