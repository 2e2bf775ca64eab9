# Two commands: `make demo` (the main job) and `make test` (the test suite). Both create the environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: pin the CPU wheel so pip does not pull several GB of CUDA packages.
# On a GPU machine: make TORCH_SPEC="torch" EXTRAS="dev,cuda"
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: demo test env clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(BIN)/ssmvl demo --out outputs/demo

# pytest exits 5 when it collected no test: that is an error here, not a pass.
test: env
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) outputs
