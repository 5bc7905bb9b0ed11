# GNU make.  `make test` builds .venv on first use (stamp: $(VENV)/.installed).
PYTHON ?= python3
VENV = .venv
BIN = $(VENV)/bin

# Local CPU wheel where it exists (seconds); otherwise (`|| true` below) pip resolves torch
# from the range of the torch extra in pyproject.toml.
TORCH_PIN ?= torch==2.13.0
# Each AD framework is an extra (a plain `pip install bilevel` has neither): the suite runs on
# both, so the development venv has both.
EXTRAS ?= torch,jax,test,interop,examples,dev
SRC = bilevel
# pytest-xdist: one worker per core (the JAX half of the suite is mostly single-threaded
# compilation). PYTEST_ARGS= runs in one process.
PYTEST_ARGS ?= -n auto
LINT_PATHS = bilevel solvers tests examples benchmarks

.PHONY: install test demo lint typecheck clean bench repro

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_PIN)" || true
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

# Options (doctests, -m "not slow", ...) come from [tool.pytest.ini_options].
# Exit code 5 means "no tests collected": a failure, not a pass.
test: $(VENV)/.installed
	@rc=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5) -- treating as failure" >&2; fi; \
	exit $$rc

demo: $(VENV)/.installed
	$(BIN)/python examples/maml_sinusoid.py

# MAML meta-gradient: bilevel vs higher, torchopt and torch.func (benchmarks/results/maml_cpu.md),
# then bilevel on JAX vs hand-written JAX (maml_jax_cpu.md).  BENCH_ARGS=--quick for a smoke run.
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/maml.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/maml_jax.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/fit_step.py $(BENCH_ARGS)

# Every example at full size; regenerates docs/results/ and docs/results.md (hours on 2 cores).
# A subset: make repro REPRO_ARGS="fewshot_digits oja_rule".
repro: $(VENV)/.installed
	$(BIN)/python examples/repro.py $(REPRO_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(VENV)/.installed
	$(BIN)/pyright --pythonpath $(BIN)/python $(SRC)

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .mypy_cache .hypothesis .tox
	rm -rf *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
