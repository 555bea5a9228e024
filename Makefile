# dp-gym: `make demo` and `make test` set everything up on a fresh machine.
# torch is pinned to 2.13.0 *before* the package install: that CPU build is on this machine's
# disk, and an open range would pull a multi-GB CUDA build from the index.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dp-gym-installed

.PHONY: setup demo test test-slow test-rllib bench lint clean pretrained

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/dp-gym demo

# The import-linter layers contract (pyproject.toml) keeps the dependency direction; then the tests.
# pytest exits 5 when no test ran; make treats any non-zero exit as failure.
test: setup
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m slow -q

# RLlib pins its own gymnasium, so its example is tested in a venv of its own (torch pinned first, as above).
RLLIB_VENV := .venv-rllib
test-rllib:
	test -x $(RLLIB_VENV)/bin/python || $(PYTHON) -m venv $(RLLIB_VENV)
	$(RLLIB_VENV)/bin/python -c "import torch" 2>/dev/null || $(RLLIB_VENV)/bin/pip install "torch==2.13.0"
	$(RLLIB_VENV)/bin/pip install -q -e '.[dev,rllib]'
	OMP_NUM_THREADS=1 $(RLLIB_VENV)/bin/python -m pytest -m slow -q tests/test_rllib_example.py

# The shipped controllers (`sac:pretrained`): SAC trained on public proxies only, seed 0, one per
# recommended env. Proxy episodes touch no private data, so their noise may be public: the published
# key below makes the runs reproducible. Never use a published key on private data.
# The budget-unit text env ships the session-12 recipe: the paired reward (each proxy episode against
# its action-0 twin), a checkpoint every 500 steps, and `dp-gym select` (held-out public proxies)
# exporting the checkpoint that beats action 0 most (it fails, shipping nothing, when none does;
# `dp-gym train` refuses a folder that holds an earlier run's checkpoints, hence the rm).
PUBLIC_PROXY_KEY := dp-gym-public-proxy-key-0
PRETRAINED_ENVS := TinyTextFlatSchedule-v0 TinyVisionSchedule-v0
PRETRAINED_SELECTED_ENVS := TinyTextBudgetSchedule-v0
pretrained: setup
	for name in $(PRETRAINED_ENVS); do \
		rm -rf runs/pretrained/sac/$$name; \
		DP_GYM_SECRET_KEY=$(PUBLIC_PROXY_KEY) $(VENV)/bin/dp-gym train --env dp_gym/$$name --algo sac \
			--timesteps 1000 --seed 0 --n-envs 2 --actor-init zero --checkpoint-every 1000 --no-progress \
			--out runs/pretrained/sac/$$name || exit 1; \
		mkdir -p agents/pretrained/sac/$$name; \
		cp runs/pretrained/sac/$$name/model.zip runs/pretrained/sac/$$name/run.json agents/pretrained/sac/$$name/; \
	done
	for name in $(PRETRAINED_SELECTED_ENVS); do \
		rm -rf runs/pretrained/sac/$$name agents/pretrained/sac/$$name; \
		DP_GYM_SECRET_KEY=$(PUBLIC_PROXY_KEY) $(VENV)/bin/dp-gym train --env dp_gym/$$name --algo sac \
			--timesteps 2000 --seed 0 --n-envs 2 --actor-init zero --checkpoint-every 500 --no-progress \
			--proxy '{"paired": true}' --out runs/pretrained/sac/$$name || exit 1; \
		DP_GYM_SECRET_KEY=$(PUBLIC_PROXY_KEY) $(VENV)/bin/dp-gym select runs/pretrained/sac/$$name \
			--export agents/pretrained/sac/$$name || exit 1; \
	done

bench: setup
	$(PY) benchmarks/dp_step.py

lint: setup
	$(VENV)/bin/ruff check dp_gym agents tests benchmarks examples

clean:
	rm -rf $(VENV) $(RLLIB_VENV) runs .pytest_cache
