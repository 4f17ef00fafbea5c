# Every target creates the virtual environment it needs; nothing is installed by hand.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# The CPU build of torch for this project's machines; the package itself accepts a wider range.
TORCH   ?= torch==2.13.0

.PHONY: run test bench ui clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/amsgrad synthetic

test: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) -m benchmarks

# MLflow's web UI on the runs in ./mlflow.db: the full mlflow package (~850 MB), at the version
# of the mlflow-skinny the experiments use, then `mlflow ui` on http://127.0.0.1:5000.
ui: $(VENV)/.installed
	$(PY) -m pip install -q "mlflow==$$($(PY) -c 'import importlib.metadata as m; print(m.version("mlflow-skinny"))')"
	$(VENV)/bin/mlflow ui

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
