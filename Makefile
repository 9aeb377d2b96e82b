# One command each, from a fresh clone:
#   make serve   set up what the site needs (no torch), build the annotated site and serve it on http://127.0.0.1:8000
#   make site    the same, building the site into site/, the Chinese and Japanese ones into site/zh/, site/ja/ (strict)
#   make test    set up .venv with everything and run every test
#   make translations   list the paragraphs whose Chinese translation is missing or stale
#   make quick   set up .venv and train the quick preset of the experiment (more settings: ARGS="key=value ...")
#   make app     set up .venv and the app's npm packages, and start the labml app on http://127.0.0.1:5005
#                (then train with: labml_app_url=http://127.0.0.1:5005/api/v1/default/ make quick)
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

# The front-end libraries of the labml app (bootstrap, d3, Font Awesome), from npm
APP_ASSETS := app/node_modules/.package-lock.json
$(APP_ASSETS): app/package.json app/package-lock.json
	npm ci --prefix app --no-audit --no-fund

app-assets: $(APP_ASSETS)

serve: setup-docs
	$(PY) -m mkdocs serve

site: setup-docs
	$(PY) -m mkdocs build --strict
	$(PY) -m mkdocs build --strict -f mkdocs.zh.yml
	$(PY) -m mkdocs build --strict -f mkdocs.ja.yml

# The home page, the model pages and the experiment's must be fully translated (see
# translations/README.md); the other pages are shown in English until they are.
TRANSLATED := docs/index.md labml_nn_switch/__init__.py labml_nn_switch/mha.py \
	labml_nn_switch/feed_forward.py labml_nn_switch/switch.py labml_nn_switch/routing_result.py \
	labml_nn_switch/expert_rows.py \
	labml_nn_switch/transformer.py \
	labml_nn_switch/experiment.py labml_nn_switch/configs.py labml_nn_switch/trainer.py labml_nn_switch/cli.py
translations: setup-docs
	$(PY) -m mkdocs_literate.translate status
	$(PY) -m mkdocs_literate.translate status --strict $(TRANSLATED) > /dev/null
	$(PY) -m mkdocs_literate.translate status --lang ja --strict labml_nn_switch/switch.py labml_nn_switch/routing_result.py

# The app's browser test needs its npm packages: installed where npm is (CI has it), else the test skips
test: setup
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory app-assets; \
	else echo "make: no npm here: the labml app's browser test will be skipped"; fi
	$(PY) -m pytest -q

quick: setup
	$(PY) -m labml_nn_switch.experiment train preset=quick $(ARGS)

app: setup $(APP_ASSETS)
	$(PY) -m labml_nn_switch.app $(ARGS)

.PHONY: setup setup-docs serve site translations test quick app app-assets
