# Two commands (see README): `make demo` and `make test`. Both install everything first.
# CPU machines take torch==2.13.0 (a CPU build); on GPU clusters override TORCH_SPEC/TORCH_INDEX, e.g.
#   make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_QUIET ?= --quiet --disable-pip-version-check

.PHONY: install demo test notebooks clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install $(PIP_QUIET) -e ".[dev]"
	touch $@

demo: install
	$(PY) launch.py train

test: install
	$(PY) -m pytest -q

# write notebooks/*.ipynb from notebooks/src/ and run each, saving its outputs (a few minutes per notebook)
notebooks: install
	$(PY) notebooks/build.py --execute

clean:
	rm -rf $(VENV) data/demo.zarr runs/quickstart
