# One entry point for set-up and tests. Every target creates the environment when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench lock clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The one-command demo: synthetic data -> features -> training -> evaluation -> captions, under runs/demo
# (rerun to skip finished stages; an interrupted stage resumes). DEMO_ARGS passes options, e.g. --force train.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(VENV)/bin/enclap-demo $(DEMO_ARGS)

# The whole suite, slow tests included, on both cores.
test: $(STAMP)
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 -q -m "not slow"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/run_all.py

# Re-pin the lock from the current environment (torch stays pinned to the CPU wheel's public version).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -E '^(pytest|pytest-xdist|execnet|iniconfig|pluggy)==' \
	  | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.txt.new && mv requirements.txt.new requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache
