# One command each, from a fresh clone:
#   make serve   set up what the site needs (no torch), build the annotated site and serve it on http://127.0.0.1:8000
#   make site    the same, building the site into site/, the Chinese and Japanese ones into site/zh/, site/ja/ (strict)
#   make test    set up .venv with everything and run every test
#   make translations   list the paragraphs whose Chinese translation is missing or stale
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
	$(PY) -m mkdocs build --strict -f mkdocs.zh.yml
	$(PY) -m mkdocs build --strict -f mkdocs.ja.yml

# The home page and the model pages must be fully translated (see
# translations/README.md); the other pages are shown in English until they are.
TRANSLATED := docs/index.md labml_nn_switch/__init__.py labml_nn_switch/mha.py \
	labml_nn_switch/feed_forward.py labml_nn_switch/switch.py labml_nn_switch/transformer.py \
	labml_nn_switch/experiment.py
translations: setup-docs
	$(PY) -m mkdocs_literate.translate status
	$(PY) -m mkdocs_literate.translate status --strict $(TRANSLATED) > /dev/null
	$(PY) -m mkdocs_literate.translate status --lang ja --strict labml_nn_switch/switch.py

test: setup
	$(PY) -m pytest -q

quick: setup
	$(PY) -m labml_nn_switch.experiment train preset=quick $(ARGS)

.PHONY: setup setup-docs serve site translations test quick
