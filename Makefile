# Two entry points: `make demo` (install + main job) and `make test` (install + lint + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,export,data,report,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/datprl-edge zoo
	$(VENV)/bin/datprl-edge pipeline --recipe quick

lint: $(STAMP)
	$(VENV)/bin/ruff check datprl_edge tests benchmarks
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
