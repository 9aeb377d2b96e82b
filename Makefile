# One command each, from a fresh clone:
#   make serve   set up what the site needs (no torch), build the annotated site and serve it on http://127.0.0.1:8000
#   make site    the same, building the site into site/ (strict: broken links fail)
#   make test    set up .venv with everything and run every test
#   make quick   set up .venv and train the quick preset of the experiment (more settings: ARGS="key=value ...")
PY := .venv/bin/python
# mkdocs-material announces MkDocs 2 in a box on every build; we know
export NO_MKDOCS_2_WARNING := 1

# Two levels of set-up in the same .venv: the site's (the generator and its
# theme), and everything (torch, the project, the tests), which includes it.
.venv/.docs-installed: mkdocs-literate/pyproject.toml scripts/setup.sh
	scripts/setup.sh docs
	touch $@

.venv/.installed: pyproject.toml mkdocs-literate/pyproject.toml scripts/setup.sh
	scripts/setup.sh dev
	touch $@ .venv/.docs-installed

setup-docs: .venv/.docs-installed

setup: .venv/.installed

serve: setup-docs
	$(PY) -m mkdocs serve

site: setup-docs
	$(PY) -m mkdocs build --strict

test: setup
	$(PY) -m pytest -q

quick: setup
	$(PY) -m labml_nn_switch.experiment train preset=quick $(ARGS)

.PHONY: setup setup-docs serve site test quick
