# The two set-up commands: `make train` (the main job) and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NB     ?= notebooks/*.ipynb

.PHONY: install train test test-browser test-reference lab notebooks bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

## make train: generate the shapes data in data/shapes (if missing), train the tiny preset, evaluate, write runs/tiny/
## (run again: continues runs/tiny, a finished run is re-evaluated; delete runs/tiny for a fresh run)
train: $(STAMP)
	$(BIN)/python -m minimaskrcnn train --preset tiny --data shapes --out runs/tiny --resume

## make test: unit tests, then every notebook re-executed and compared with its committed outputs (nbval)
test: $(STAMP)
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest --nbval --nbval-current-env -p no:cacheprovider notebooks

## make test-browser: each notebook run in JupyterLab in headless Chromium, one control of every widget moved and its
## picture checked to change (NB=notebooks/05_rpn.ipynb for one). Needs Debian's chromium and chromium-driver.
BROWSER_STAMP := $(VENV)/.installed-browser
$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[dev,browser]'
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP)
	$(BIN)/python .ci/browser_test.py $(NB)

## make test-reference: parity tests against torchvision, in a separate venv with a CUDA build of torch; first
## (re)records torchvision's outputs in tests/fixtures/golden/, which `make test` compares against (commit them)
test-reference:
	bash .ci/reference-venv.sh .venv-reference >/dev/null
	.venv-reference/bin/python -m pip install -q -e . --no-deps
	.venv-reference/bin/python tests/record_golden.py
	.venv-reference/bin/python -m pytest tests -m reference
	.venv-reference/bin/python -m pytest tests/test_parity_golden.py

## make lab: JupyterLab on the notebooks
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

## make notebooks: re-execute the notebooks in place and strip volatile metadata (NB=notebooks/05_rpn.ipynb for one)
notebooks: $(STAMP)
	$(BIN)/python .ci/execute_notebooks.py $(NB)

## make bench: the speed and memory benchmarks
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs *.egg-info
