# One command each, from a fresh clone:
#   make serve   set up .venv, build the annotated site and serve it on http://127.0.0.1:8000
#   make test    set up .venv and run every test
#   make site    set up .venv and build the site into site/, the Chinese and Japanese ones into site/zh/, site/ja/ (strict)
#   make translations   list the paragraphs whose Chinese translation is missing or stale
#   make quick   set up .venv and train the quick preset of the experiment (more settings: ARGS="key=value ...")
PY := .venv/bin/python
# mkdocs-material announces MkDocs 2 in a box on every build; we know
export NO_MKDOCS_2_WARNING := 1

.venv/.installed: pyproject.toml mkdocs-literate/pyproject.toml scripts/setup.sh
	scripts/setup.sh dev
	touch $@

setup: .venv/.installed

serve: setup
	$(PY) -m mkdocs serve

site: setup
	$(PY) -m mkdocs build --strict
	$(PY) -m mkdocs build --strict -f mkdocs.zh.yml
	$(PY) -m mkdocs build --strict -f mkdocs.ja.yml

# The home page and the model pages must be fully translated (see
# translations/README.md); the other pages are shown in English until they are.
TRANSLATED := docs/index.md labml_nn_switch/__init__.py labml_nn_switch/mha.py \
	labml_nn_switch/feed_forward.py labml_nn_switch/switch.py labml_nn_switch/transformer.py \
	labml_nn_switch/experiment.py
translations: setup
	$(PY) -m mkdocs_literate.translate status
	$(PY) -m mkdocs_literate.translate status --strict $(TRANSLATED) > /dev/null
	$(PY) -m mkdocs_literate.translate status --lang ja --strict labml_nn_switch/switch.py

test: setup
	$(PY) -m pytest -q

quick: setup
	$(PY) -m labml_nn_switch.experiment train preset=quick $(ARGS)

.PHONY: setup serve site translations test quick
