# kdlab: `make tutorial` runs every notebook headless, `make test` runs the test suite, `make lab`
# opens JupyterLab on a working copy of the notebooks (work/). Each target creates .venv and installs
# kdlab into it when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kdlab-installed
LAB    := $(VENV)/.kdlab-lab-installed
BROWSER := $(VENV)/.kdlab-browser-installed
WORK   := work
CHROMIUM ?= /usr/bin/chromium
# JupyterLab refuses to run as root without --allow-root
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
RUN    := $(shell echo "$$(date +%Y%m%d-%H%M%S)-$$$$")
P      ?=
PYTEST_ARGS ?=

.PHONY: tutorial test test-fast test-browser lint lab lab-reset figures clean-notebooks refresh-references assignments

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

$(LAB): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,lab]"
	@touch $(LAB)

$(BROWSER): $(LAB)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,lab,browser]"
	@touch $(BROWSER)

## Execute every notebook on default parameters (pass more with P="-p name value ...").
tutorial: $(STAMP)
	@mkdir -p runs/$(RUN)
	@for nb in notebooks/[0-9][0-9]_*.ipynb; do \
	  name=$$(basename $$nb .ipynb); \
	  echo "== $$name"; \
	  start=$$(date +%s); \
	  KDLAB_PROGRESS=text KDLAB_WIDGETS=$${KDLAB_WIDGETS:-0} $(BIN)/papermill $$nb runs/$(RUN)/$$name.ipynb --cwd notebooks -k python3 \
	    -p out_dir $(CURDIR)/runs/$(RUN)/$$name $(P) || exit 1; \
	  echo "   $$name took $$(( $$(date +%s) - start )) s"; \
	done
	@ln -sfn $(RUN) runs/latest
	@echo "Executed notebooks and their metrics.json: runs/$(RUN)/ (runs/latest points there)"

## Run the whole test suite (unit tests, lint, and each notebook once in smoke mode).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The unit tests and lint only: no notebook is executed (about a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not notebook and not browser" $(PYTEST_ARGS)

## The tutorials in JupyterLab in headless Chromium (smoke mode; needs $(CHROMIUM): apt-get install chromium).
test-browser: $(BROWSER)
	@test -x $(CHROMIUM) || { echo "make test-browser needs Chromium at $(CHROMIUM): apt-get install chromium (or CHROMIUM=/path/to/chromium)"; exit 1; }
	KDLAB_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -m browser tests/test_browser_lab.py $(PYTEST_ARGS)
	@echo "Screenshots: $${KDLAB_BROWSER_OUT:-runs/browser-test/latest/}"

## Lint the package, tools, tests and notebooks (ruff reads .ipynb).
lint: $(STAMP)
	$(BIN)/ruff check kdlab tools data tests notebooks

## Open JupyterLab on work/, a working copy of the tutorials, exercises and figures in notebooks/ (it copies
## only the files work/ lacks, so your edits stay; tracked notebooks stay clean).
lab: $(LAB)
	@mkdir -p $(WORK)
	@cd notebooks && find [0-9][0-9]_*.ipynb README.md exercises figures \( -name .ipynb_checkpoints -o -name __pycache__ \) -prune \
	  -o -type f -print | while read -r f; do \
	  if [ ! -e "$(abspath $(WORK))/$$f" ]; then mkdir -p "$(abspath $(WORK))/$$(dirname "$$f")" && cp -p "$$f" "$(abspath $(WORK))/$$f" && echo "copied notebooks/$$f to $(WORK)/"; fi; \
	done
	$(BIN)/jupyter lab $(WORK)/ $(ALLOW_ROOT)

## Move work/ aside (to work.old-<date-time>/) and open JupyterLab on fresh copies of the notebooks.
lab-reset:
	@if [ -d $(WORK) ]; then old=$(WORK).old-$$(date +%Y%m%d-%H%M%S); mv $(WORK) $$old && echo "moved $(WORK)/ to $$old/"; fi
	@$(MAKE) --no-print-directory lab

## Copy the default run's figures (runs/latest, from `make tutorial`) into notebooks/figures/.
figures: $(STAMP)
	$(BIN)/python tools/collect_figures.py runs/latest

## Strip outputs and volatile metadata from the notebooks (keeps NBVAL_CHECK_OUTPUT cells).
clean-notebooks: $(STAMP)
	$(BIN)/python tools/nbclean.py notebooks/*.ipynb $(wildcard notebooks/*/*.ipynb)

## Re-execute the notebooks in smoke mode to refresh the NBVAL_CHECK_OUTPUT references, then clean.
refresh-references: $(STAMP)
	@for nb in notebooks/[0-9][0-9]_*.ipynb; do \
	  KDLAB_SMOKE=1 KDLAB_PROGRESS=text KDLAB_WIDGETS=0 KDLAB_RUNS=$$(mktemp -d) $(BIN)/papermill $$nb $$nb --cwd notebooks -k python3 || exit 1; \
	done
	$(MAKE) clean-notebooks

## Generate the learners' assignments (notebooks/exercises/) from notebooks/course/source/ with nbgrader.
assignments: $(STAMP)
	$(BIN)/python tools/assignments.py
