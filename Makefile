# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3.11
VENV    ?= .venv
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?= -q

.PHONY: install test demo bench clean

# Re-installs only when a dependency file changed (stamp on them).
$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	PYTHON=$(PY) bash scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/python tools/demo.py $(DEMO_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
