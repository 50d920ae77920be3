# The few commands people run. `make demo` and `make test` set up .venv themselves on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= .demo
# the sweep name in experiments/sweeps/demo_synthetic.yaml
DEMO_EXPERIMENT ?= demo_synthetic

.PHONY: demo notebook test test-fast lint format bench cluster-up cluster-down clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: pip takes it from the local cache (see ../shared/ENVIRONMENT.md)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m analysis demo --workdir $(DEMO_DIR)

# JupyterLab on the demo's store (run `make demo` first); the notebook reads these two variables. Its file browser
# opens at the repository root; --allow-root: containers run as root, and jupyter refuses root without it
notebook: $(STAMP)
	test -f $(DEMO_DIR)/mlflow.db || { echo "error: no demo store at $(DEMO_DIR)/mlflow.db (run make demo first)" >&2; exit 1; }
	DEEPLAB_TRACKING_URI=sqlite:///$(abspath $(DEMO_DIR))/mlflow.db DEEPLAB_EXPERIMENT=$(DEMO_EXPERIMENT) \
		$(VENV)/bin/jupyter lab --allow-root --ServerApp.root_dir=$(CURDIR) $(NOTEBOOK_ARGS) \
		notebooks/res50_vs_res101.ipynb

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not slurm and not browser and not postgres" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

cluster-up:
	bash slurm/local-cluster/start.sh

cluster-down:
	bash slurm/local-cluster/stop.sh

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
