# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.local/dagster_home
export PREDICTION_PIPELINE_DATA_DIR := $(CURDIR)/.local

.PHONY: install home demo test lint format ui api daemon clean bench helm-schema mutation

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The local Dagster instance: SQLite storage, run queue and limits from ./dagster.yaml.
home: $(DAGSTER_HOME)/dagster.yaml
$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: install home
	$(BIN)/prediction-pipeline db upgrade
	$(BIN)/prediction-pipeline demo

# The `serial` tests time sends against a strict stand-in provider (test_shared_limits.py,
# test_daemon_shared_limits.py): they run alone, first, on a quiet machine. The rest runs on
# three workers (two cores: the daemon tests mostly wait): the daemon tests one after another
# on one of them, from the start, the other tests in chunks of at most 8 (conftest.py:
# pytest_collection_modifyitems).
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/python -m pytest -q -p no:cacheprovider -m serial
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --maxschedchunk 8 -m "not serial"

# lint-imports: the layering contracts of pyproject.toml ([tool.importlinter]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The Dagster UI and daemon (schedules, sensors, run queue) on http://127.0.0.1:3000
ui: install home
	$(BIN)/prediction-pipeline db upgrade
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The HTTP API for the web app on http://127.0.0.1:8000 (OpenAPI at /docs). Create a key
# first: .venv/bin/prediction-pipeline api keys create web-app
api: install
	$(BIN)/prediction-pipeline db upgrade
	$(BIN)/prediction-pipeline api serve --host 127.0.0.1 --port 8000

# Each benchmark prints a table and writes benchmarks/results/<name>.json (see benchmarks/README.md).
bench: install
	$(BIN)/python -m benchmarks.prediction_throughput
	$(BIN)/python -m benchmarks.deltas_scale
	$(BIN)/python -m benchmarks.digest_throughput
	$(BIN)/python -m benchmarks.on_demand_latency

# The Dagster Helm chart's values schema and defaults at the pinned release, for
# prediction_pipeline_tests/test_deploy.py (needs GitHub; see deploy/helm/fetch_schema.sh).
helm-schema:
	deploy/helm/fetch_schema.sh

# Mutation testing (not part of `make test`; long: see the README for measured runs; on a
# shared machine run one module at a time with `mutmut run --max-children 1 "MODULE.*"`): mutmut mutates store/, services/ and
# clients/rate_limit.py ([tool.mutmut] in pyproject.toml) and runs the fast SQLite tests
# against each mutant, then prints the score per module and lists the survivors in
# .local/mutation/survivors.txt (`mutmut show NAME`).
# MUTANTS="" mutates every module under store/ and services/ (much longer).
MUTANTS ?= prediction_pipeline.store.predictions.* prediction_pipeline.services.predict.* \
	prediction_pipeline.clients.rate_limit.* prediction_pipeline.store.digest_ledger.* \
	prediction_pipeline.services.digest_delivery.* prediction_pipeline.services.digest_sending.* \
	prediction_pipeline.services.digest_ledger_writer.* \
	prediction_pipeline.services.digest_delivery_state.* prediction_pipeline.store.credits.* \
	prediction_pipeline.store.requests.* prediction_pipeline.store.sessions.* \
	prediction_pipeline.store.queue_items.* prediction_pipeline.store.queue_recovery.* \
	prediction_pipeline.store.alerts.*
mutation: install
	$(BIN)/mutmut run $(MUTANTS)
	$(BIN)/python tools/mutation_report.py --survivors .local/mutation/survivors.txt \
		--equivalent tools/equivalent_mutants.txt $(subst .*,,$(MUTANTS))

clean:
	rm -rf .local mutants
