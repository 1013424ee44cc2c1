PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: run test bench install

$(VENV_STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(VENV_STAMP)

install: $(VENV_STAMP)

run: $(VENV_STAMP)
	$(PY) train.py prepare

test: $(VENV_STAMP)
	$(PY) -m pytest -q

bench: $(VENV_STAMP)
	$(PY) -m bench
