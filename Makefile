# The project's commands. `make test` installs everything it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: setup system-deps test unit integration chaos lint proto docs demo clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

system-deps:
	@./scripts/install-system-deps.sh

test: setup unit integration

unit: $(STAMP)
	$(BIN)/pytest tests $(PYTEST_ARGS)

# The chaos suite (kills at every step of a switch, about three minutes) runs with `make chaos`,
# and in CI with every other suite against NATS in containers (`make docker-test`).
integration: setup
	$(BIN)/pytest integration_tests -m "not chaos" --durations=15 $(PYTEST_ARGS)

chaos: setup
	$(BIN)/pytest -m chaos integration_tests -s $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared devtools cli proto/generate.py mock_mlnode mock_chain services bench

proto: $(STAMP)
	$(BIN)/python -m proto.generate

docs: $(STAMP)
	$(BIN)/mlnode-upgrade events docs --out docs

demo: setup
	$(BIN)/mlnode-upgrade demo

.PHONY: bench bench-quick
bench: setup
	$(BIN)/python -m bench

bench-quick: setup
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info

# The compose stack on a local Docker engine of its own (dockerd from apt, images built without a
# registry), one upgrade under load through it; see scripts/docker/ and the operator guide.
.PHONY: docker-smoke docker-test
docker-smoke: $(STAMP)
	./scripts/docker/run-smoke.sh

# The compose smoke, then every integration suite with NATS in containers (CI runs this).
docker-test: setup
	WITH_SUITES=1 PYTEST_ARGS="$(PYTEST_ARGS)" ./scripts/docker/run-smoke.sh
