PY := .venv/bin/python
VENV_STAMP := .venv/.installed
PORT ?= 8501

.PHONY: run test lint bench install train dashboard chromium

# A fresh clone: create the virtual environment, install the pinned packages (runtime and
# development tools) and binsight itself, editable (so `core` imports anywhere and `binsight` runs).
$(VENV_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(VENV_STAMP)

install: $(VENV_STAMP)

# The browser test drives Debian's Chromium (Playwright cannot download its own browser offline).
# Installed only where it is missing and the user can (root, as in CI); otherwise the test is
# skipped with a reason saying how to install it.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q chromium; fi

train: $(VENV_STAMP)
	$(PY) train.py suite

dashboard: $(VENV_STAMP)
	@echo "binsight dashboard: http://localhost:$(PORT)"
	$(PY) -m streamlit run dashboard/app.py --server.headless true --server.port $(PORT)

# Main job: install, train the default experiments the store lacks, start the dashboard.
run: train dashboard

test: $(VENV_STAMP) chromium
	$(PY) -m pytest -q

lint: $(VENV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(VENV_STAMP)
	$(PY) -m bench $(BENCH_ARGS)
