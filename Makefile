# Two commands do everything on a fresh machine:
#   make demo   set up, then run the main job on the small default model
#   make test   set up, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# real models and text for tests and demos (beside the project in CI)
export AUTOPRUNE_DATA_DIR ?= $(abspath ../shared/data)
export RAY_AUTH_MODE ?= disabled

.PHONY: setup demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# no GPU: the CPU build of torch (an unpinned torch would pull a multi-GB CUDA build)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(VENV)/bin/pip install -q torch==2.13.0; fi
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	# a 3-minute search (GP over metrics, then evolution over per-projection ratios and the weight
	# update, then the winner chosen against the recipes on the selection split), then the leaderboard
	$(VENV)/bin/autoprune search --model stories260K --budget 3m --sparsity 0.5 \
		--out runs/demo-search-$$(date +%Y%m%d-%H%M%S)
	$(VENV)/bin/autoprune leaderboard --top 5

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
