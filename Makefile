# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-vm lint format venv clean bench

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@touch $(STAMP)

## Set up and run the portal (SQLite + local Redis, demo data) in the foreground.
## TARGET=vm: the demo target is a real Debian VM under QEMU (first run builds its image).
TARGET ?= local
run: venv
	$(BIN)/python -m portal.devstack --target=$(TARGET)

## Set up and run the whole test suite against real PostgreSQL and Redis.
test: venv
	$(BIN)/python -m tests.run $(ARGS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 $(BIN)/mypy

## The VM tier alone (tests/vm, a real systemd host under QEMU; `make test` runs it too).
test-vm: venv
	$(BIN)/python -m tests.run -m vm $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 $(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Benchmarks (bench/): print figures, not timed tests. Installs bench/requirements.txt.
.PHONY: bench-pra bench-backup bench-heartbeats bench-sweep bench-live bench-audit bench-year bench-vm
bench: bench-pra bench-backup bench-heartbeats bench-sweep bench-live bench-audit bench-year

## Remediation latency: approval → command on the target, vs bare SSH and ansible.
bench-pra: venv
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python bench/pra_latency.py

## Backup wall time and worker memory on pgbench databases (~0.5 and ~1 GB), vs pg_dump and gzip.
bench-backup: venv
	$(BIN)/python bench/backup_bench.py

## Heartbeat ingestion (heartbeats/s, p50/p99) vs a bare Django view; the missed-heartbeat sweep.
## py-spy (profiles when a target is missed) goes into the venv only, not into requirements.lock.
bench-heartbeats: venv
	$(BIN)/pip install -q py-spy==0.4.3
	$(BIN)/python bench/heartbeats.py $(ARGS)

## The missed-heartbeat sweep at 1,000 and 10,000 overdue of 100,000, and a 5,000-agent storm.
bench-sweep: venv
	$(BIN)/python -m bench.sweep_storm $(ARGS)

## Idle live pages: reconnects over 10 minutes, next to the pre-fix channel layer.
bench-live: venv
	$(BIN)/python bench/live_idle.py $(ARGS)

## The VM target: image build (ARGS=--cold: from scratch), boot, each action's latency on it.
bench-vm: venv
	$(BIN)/python bench/vm_target.py $(ARGS)

## audit_verify over 500,000 events, next to the old verifier.
bench-audit: venv
	$(BIN)/python bench/audit_verify.py $(ARGS)

## A year of data (issue 17) in a throwaway bench_year database: every admin page and API
## list, median ms, queries, slowest query. ARGS="--scale 0.1" for a smaller world.
bench-year: venv
	$(BIN)/python bench/year_of_data.py $(ARGS)

clean:
	rm -rf $(VENV) var/test-services var/test-var
