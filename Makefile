# Two commands: `make demo` (the main job) and `make test` (the test suite). Both create the environment first.
# Both install the exact versions in requirements/lock.txt (what CI tests). Compatibility checks:
# `make test-latest` (newest releases pyproject allows) and `make test-oldest` (the oldest allowed transformers).
# Refresh the lock only after `make test-latest` passes: `make lock`, then `make test`, then commit the lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: pin the CPU wheel so pip does not pull several GB of CUDA packages.
# On a GPU machine: make TORCH_SPEC="torch" EXTRAS="dev,cuda"
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
LOCK := requirements/lock.txt
# The oldest transformers that pyproject allows (transformers>=5.0,<6).
OLDEST_TRANSFORMERS ?= transformers==5.0.0
PIP := python -m pip install -q --disable-pip-version-check

# One test command for test, test-latest and test-oldest ($(1) = the venv's bin folder).
# pytest exits 5 when it collected no test: that is an error here, not a pass.
PYTEST_ARGS ?= -q -p no:cacheprovider
run_pytest = $(1)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc
# Versions of the dependencies that matter most, printed by the compatibility targets.
show_versions = $(1)/python -c "from importlib.metadata import version; \
	print(*(p + '==' + version(p) for p in ('torch', 'transformers', 'peft', 'accelerate', 'datasets', 'huggingface_hub', 'tokenizers')))"
# A fresh venv ($(1)) with torch: the start of test-latest, test-oldest and lock.
fresh_venv = rm -rf $(1) && $(PYTHON) -m venv $(1) && $(1)/bin/$(PIP) "$(TORCH_SPEC)"

.PHONY: demo test env clean test-latest test-oldest lock

# The lock is a constraints file: `-e .[EXTRAS]` resolves to exactly its versions (torch comes from TORCH_SPEC).
# Re-runs when pyproject.toml or the lock changes; works on an existing .venv as on a fresh one.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) "$(TORCH_SPEC)"
	$(BIN)/$(PIP) -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(BIN)/ssmvl demo --out outputs/demo

test: env
	$(call run_pytest,$(BIN))

# Newest releases that pyproject allows, without the lock, in a fresh .venv-latest.
test-latest:
	$(call fresh_venv,.venv-latest)
	.venv-latest/bin/$(PIP) --upgrade -e ".[dev]"
	$(call show_versions,.venv-latest/bin)
	$(call run_pytest,.venv-latest/bin)

# The oldest allowed transformers, everything else as pip resolves it, in a fresh .venv-oldest.
test-oldest:
	$(call fresh_venv,.venv-oldest)
	.venv-oldest/bin/$(PIP) -e ".[dev]" "$(OLDEST_TRANSFORMERS)"
	$(call show_versions,.venv-oldest/bin)
	$(call run_pytest,.venv-oldest/bin)

# Rewrites the lock from a fresh .venv-lock with the newest releases: pip freeze less torch (and, with a CUDA
# TORCH_SPEC, the nvidia-* / triton wheels that torch pulls) and the editable ssmvl line.
# Refresh it only after `make test-latest` passes; then run `make test` and commit requirements/lock.txt.
lock:
	$(call fresh_venv,.venv-lock)
	.venv-lock/bin/$(PIP) -e ".[dev]"
	mkdir -p $(dir $(LOCK))
	{ echo '# Exact versions installed by `make env` (so `make test`, `make demo` and CI) as pip constraints:'; \
	  echo '# `pip install -c requirements/lock.txt -e ".[dev]"` on Python 3.11, after torch (pinned by TORCH_SPEC).'; \
	  echo '# Made by `make lock`: a fresh .venv-lock, $(TORCH_SPEC), `pip install -e ".[dev]"` (the newest releases'; \
	  echo '# pyproject allows), then `pip freeze --exclude-editable` less torch. Do not edit by hand.'; \
	  echo '# Refresh: `make test-latest` passes -> `make lock` -> `make test` -> commit this file.'; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
	    | grep -viE '^(torch|triton|nvidia-[a-z0-9_.-]*)==|^-e '; \
	} > $(LOCK).tmp
	grep -q '^transformers==' $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	@echo "wrote $(LOCK); now run: make test"

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest .venv-lock outputs
