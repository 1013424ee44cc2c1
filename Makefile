PY := .venv/bin/python
VENV_STAMP := .venv/.installed
PORT ?= 8501

.PHONY: run test bench install train dashboard

# A fresh clone: create the virtual environment and install the pinned packages.
$(VENV_STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(VENV_STAMP)

install: $(VENV_STAMP)

# The browser test drives Debian's Chromium (Playwright cannot download its own browser offline).
/usr/bin/chromium:
	apt-get update -q && apt-get install -y -q chromium

train: $(VENV_STAMP)
	$(PY) train.py suite

dashboard: $(VENV_STAMP)
	@echo "binsight dashboard: http://localhost:$(PORT)"
	$(PY) -m streamlit run dashboard/app.py --server.headless true --server.port $(PORT)

# Main job: install, train the default experiments the store lacks, start the dashboard.
run: train dashboard

test: $(VENV_STAMP) /usr/bin/chromium
	$(PY) -m pytest -q

bench: $(VENV_STAMP)
	$(PY) -m bench $(BENCH_ARGS)
