# Two entry points for a fresh clone: `make demo` (the main job) and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m fxprune.demo

test: $(STAMP)
	$(PY) -m pytest -q -x -p no:cacheprovider

clean:
	rm -rf .venv *.egg-info
