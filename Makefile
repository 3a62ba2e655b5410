# mailgate: the commands CI runs, and the ones a developer types.
#
#   make serve   run mailgate with its defaults (smtp 127.0.0.1:1025); ARGS="..." adds flags
#   make test    format check, lint, type check, tests with branch coverage, protocol coverage
#                gate, then the tests again against the compiled wheel (test-compiled);
#                TEST_JOBS (3) pytest processes
#   make lint    format check, lint, type check
#   make fmt     format and fix what the linter can
#   make fuzz    the fuzz targets of the engine and the session, FUZZ_SECONDS (300) each
#   make bench   the benchmark harness
#   make clean   caches and build output (distclean: the virtualenv too)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
# pytest processes: most tests wait on the servers they start, so more than the CPUs.
TEST_JOBS ?= 3
PARALLEL  := -n $(TEST_JOBS) --dist worksteal

# Each stamp records that the virtualenv holds the project with those extras,
# installed after the last change to pyproject.toml.
RUN_STAMP := $(VENV)/.installed-fast
DEV_STAMP := $(VENV)/.installed-dev-fast

COMPILED := build/compiled

.PHONY: serve test test-compiled lint fmt coverage-protocol fuzz bench clean distclean

serve: $(RUN_STAMP)
	$(BIN)/mailgate serve $(ARGS)

# coverage starts before pytest, so modules the mailgate pytest plugin imports while
# pytest loads its plugins are measured too (pytest --cov starts after that).
test: lint
	$(BIN)/coverage run --branch --source=mailgate -m pytest $(PARALLEL)
	$(BIN)/coverage report
	$(MAKE) --no-print-directory coverage-protocol
	$(MAKE) --no-print-directory test-compiled

# The wheel `pip install .` builds has its hot path compiled with mypyc (setup.py): the
# same suite runs against it, unpacked into build/compiled, which goes first on the path.
test-compiled: $(DEV_STAMP)
	rm -rf build  # setuptools keeps what an earlier build left in build/lib*
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w build/wheel .
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(COMPILED) build/wheel/mailgate-*.whl
	MAILGATE_EXPECT_COMPILED=1 PYTHONPATH=$(COMPILED) $(BIN)/python -m pytest $(PARALLEL) -q -p no:cacheprovider

lint: $(DEV_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# The sans-I/O engine is tested to every branch.  Reads the data of the last test run.
coverage-protocol: $(DEV_STAMP)
	$(BIN)/coverage report --include='src/mailgate/protocol/*' --fail-under=100

fmt: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# make test runs each fuzz target briefly, derandomised; this runs each for FUZZ_SECONDS,
# from fresh random seeds.  A failure prints the input that reproduces it.
FUZZ_SECONDS ?= 300
fuzz: $(DEV_STAMP)
	MAILGATE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m pytest -p no:cacheprovider -q -s \
		tests/test_fuzz_engine.py::test_engine_fuzz tests/test_fuzz_session.py::test_session_fuzz

bench: $(DEV_STAMP)
	sh bench/setup.sh
	$(BIN)/python -m bench.run

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis htmlcov build dist .coverage .coverage.*
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf src/*.egg-info

distclean: clean
	rm -rf $(VENV)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[fast]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,fast]'
	touch $@
