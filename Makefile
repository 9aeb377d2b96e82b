# One command each, from a fresh clone:
#   make serve   set up .venv, build the annotated site and serve it on http://127.0.0.1:8000
#   make test    set up .venv and run every test
#   make site    set up .venv and build the site into site/ (strict: broken links fail)
#   make quick   set up .venv and train the quick preset of the experiment (more settings: ARGS="key=value ...")
#   make app     set up .venv and the app's npm packages, and start the labml app on http://127.0.0.1:5005
#                (then train with: labml_app_url=http://127.0.0.1:5005/api/v1/default/ make quick)
PY := .venv/bin/python
# mkdocs-material announces MkDocs 2 in a box on every build; we know
export NO_MKDOCS_2_WARNING := 1

.venv/.installed: pyproject.toml mkdocs-literate/pyproject.toml scripts/setup.sh
	scripts/setup.sh dev
	touch $@

setup: .venv/.installed

# The front-end libraries of the labml app (bootstrap, d3, Font Awesome), from npm
APP_ASSETS := app/node_modules/.package-lock.json
$(APP_ASSETS): app/package.json app/package-lock.json
	npm ci --prefix app --no-audit --no-fund

app-assets: $(APP_ASSETS)

serve: setup
	$(PY) -m mkdocs serve

site: setup
	$(PY) -m mkdocs build --strict

# The app's browser test needs its npm packages: installed where npm is (CI has it), else the test skips
test: setup
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory app-assets; \
	else echo "make: no npm here: the labml app's browser test will be skipped"; fi
	$(PY) -m pytest -q

quick: setup
	$(PY) -m labml_nn_switch.experiment train preset=quick $(ARGS)

app: setup $(APP_ASSETS)
	$(PY) -m labml_nn_switch.app $(ARGS)

.PHONY: setup serve site test quick app app-assets
