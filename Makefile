# imgstream — the two commands are `make up` and `make test`; everything else is a convenience.
# All set-up (system packages, the venv, JVM artifacts) happens here, idempotently.

SHELL       := /bin/bash
PYTHON      ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STATE       := .stack
STACKCTL    := $(PY) local-stack/stackctl.py
JVM_POMS    := $(wildcard local-stack/jvm/pom.xml local-stack/jvm/*/pom.xml)
# sources compiled into jars of our own (the Flink job's operators, the Connect SMT)
JVM_SOURCES  = $(shell find local-stack/jvm -path '*/src/main/*' -type f)
FLINK_OPS   := $(STATE)/lib/flink/imgstream-flink-ops.jar
PYTEST_ARGS ?=
KUBECONFORM := $(STATE)/bin/kubeconform

.PHONY: up down status logs test unit clean deps venv jars bench flink-savepoint flink-redeploy flink-status flink-reset chaos batch help k8s-validate

help:
	@echo "make up      install what is missing, start the whole local stack, run a small demo ingest"
	@echo "make test    the whole test suite (unit, integration, e2e) on the local stack"
	@echo "make down    stop everything the stack started (by pid file)"
	@echo "make status  pid, port and health of each component"
	@echo "make logs C=<component>  follow one component's log"
	@echo "make clean   stop and wipe the state folder ($(STATE)/data, logs)"
	@echo "make bench   run the benchmarks in bench/"
	@echo "make flink-savepoint | flink-redeploy | flink-status   operate the pipeline job"
	@echo "make flink-reset   start the pipeline with EMPTY state, rebuilt from Kafka (after a refused resume)"
	@echo "make chaos   the crash matrix: SIGKILL each component mid-stream, check the numbers (long)"

## --- set-up -----------------------------------------------------------------------------------

deps: $(STATE)/.system-deps venv jars $(KUBECONFORM)

# PostgreSQL 15 server binaries come from Debian's packages.
$(STATE)/.system-deps:
	@mkdir -p $(STATE)
	@if [ ! -x /usr/lib/postgresql/15/bin/postgres ] || ! command -v ss >/dev/null || ! command -v mvn >/dev/null; then \
	  echo "[deps] installing postgresql-15, iproute2, maven from apt"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 iproute2 maven >/dev/null; \
	fi
	@touch $@

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	@echo "[deps] building $(VENV) from requirements.txt"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -r requirements.txt
	@$(VENV)/bin/pip install -q --no-deps -e .
	@touch $@

jars: $(STATE)/lib/.resolved

# JVM components are pinned in local-stack/jvm/**/pom.xml and copied into an ignored folder.
$(STATE)/lib/.resolved: $(JVM_POMS) $(JVM_SOURCES)
	@echo "[deps] resolving JVM artifacts with Maven (first run downloads several hundred MB)"
	@python3 local-stack/sync_jars.py
	@touch $@

# The job's own operators alone (what `make unit` needs of the JVM side: its mini-clusters run them).
$(FLINK_OPS): local-stack/jvm/pom.xml local-stack/jvm/flink/pom.xml $(shell find local-stack/jvm/flink/src -type f)
	@echo "[deps] compiling the Flink job's JVM operators (local-stack/jvm/flink)"
	@python3 local-stack/sync_jars.py flink
	@touch $@

# kubeconform validates k8s/ offline (k8s/validate.py; tests/unit/test_k8s_validate.py runs it).
$(KUBECONFORM):
	@echo "[deps] go install kubeconform v0.8.0 into $(STATE)/bin"
	@mkdir -p $(STATE)/bin && GOBIN=$(abspath $(STATE)/bin) go install github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0

## --- the stack ----------------------------------------------------------------------------------

up: deps
	@$(STACKCTL) up

down:
	@if [ -x $(PY) ]; then $(STACKCTL) down; else echo "nothing to stop (no venv)"; fi

status: venv
	@$(STACKCTL) status

logs: venv
	@$(STACKCTL) logs $(C)

clean: down
	@rm -rf $(STATE)/data $(STATE)/logs $(STATE)/run $(STATE)/conf $(STATE)/env
	@echo "wiped $(STATE)/data and logs (kept resolved jars in $(STATE)/lib and secrets)"

## --- tests -------------------------------------------------------------------------------------

# Starts whatever part of the stack is not running, runs all three tiers, then stops only what
# it started. pytest's exit code (5 = no tests collected) is passed through, so it fails loudly.
# The crash matrix (tests/e2e/test_crash_matrix.py, ~30 min) runs in `make chaos`, not here: with it the
# suite would not fit CI's 90 minutes on 2 cores.
test: deps
	@$(STACKCTL) with-stack -- $(PY) -m pytest -ra --timeout=900 tests/unit tests/integration tests/e2e --ignore=tests/e2e/test_crash_matrix.py $(PYTEST_ARGS)

unit: venv $(KUBECONFORM) $(FLINK_OPS)
	@$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# Render both overlays and validate every resource (Kubernetes 1.33 strict + CRD schemas).
k8s-validate: venv $(KUBECONFORM)
	@$(PY) k8s/validate.py

# Stop the pipeline with a savepoint (path printed), or stop + resume from it (a code upgrade).
flink-savepoint: venv
	@$(PY) -m flink_jobs.submit savepoint

flink-redeploy: venv
	@$(PY) -m flink_jobs.submit redeploy

flink-status: venv
	@$(PY) -m flink_jobs.submit status

# The pipeline's state (dedup index, open windows) is thrown away: only when `make up` refused to
# resume it and the operator decides so. Prints a loud warning; refuses while the job runs.
flink-reset: venv
	@$(PY) -m flink_jobs.submit reset

# Kills components of the RUNNING stack one after another (it brings each back): not for a shared stack.
chaos: deps
	@$(STACKCTL) with-stack -- $(PY) -m pytest -ra -s --timeout=7200 tests/e2e/test_crash_matrix.py $(PYTEST_ARGS)

# A Spark batch job on the local stack: make batch JOB=derivatives|reconcile|gc|reorganize ARGS="..."
batch: venv jars
	@$(PY) -m batch.cli $(JOB) $(ARGS)

bench: deps
	@$(STACKCTL) with-stack -- bash -c 'for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done'
