# Every target sets itself up: a virtualenv in .venv, pip install, and the Debian packages for
# Prometheus, promtool, Alertmanager and amtool (and Slurm and munge, for the Slurm backend's
# tests) when they are missing.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: up test test-fast lint typecheck setup binaries generate check bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

binaries:
	@bash .ci/install-binaries
	@bash .ci/install-slurm

# Brings the whole loop up on this host (real GPUs when NVML finds them, else the simulated fleet).
up: setup
	@bash .ci/install-binaries
	$(VENV)/bin/gpuwarden up $(ARGS)

# All the tests, the ones driving the real binaries included, on every core after the lint and
# type gates. Distributed by file: the tests that share one session-wide loop or Slurm cluster
# live in one file each (tests/e2e/test_loop.py, tests/slurm/test_agent_slurm.py).
test: setup binaries lint typecheck
	$(PY) -m pytest -n auto --dist loadfile $(ARGS)

# The unit tests and the in-process servers: no Prometheus, Alertmanager, promtool or Slurm
# (markers `binaries` and `slow`, kept honest by tests/helpers.require_binary), under a minute.
test-fast: setup
	$(PY) -m pytest -n auto -m "not binaries and not slow" $(ARGS)

# ruff's lint and its format check ([tool.ruff] in pyproject.toml); `ruff format .` fixes the latter.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy, strict, over the package as it installs (.ci/typecheck, [tool.mypy] in pyproject.toml).
typecheck: setup
	bash .ci/typecheck

# Regenerates the committed Prometheus rules from rules/thresholds.yaml (over gpuwarden-exporter's
# metrics in rules/generated/, over dcgm-exporter's in rules/generated/dcgm-exporter/), then what is derived
# from them and from the code: the Grafana dashboard, the Kubernetes copies of the PrometheusRules
# (deploy/kubernetes for gpuwarden-exporter, deploy/kubernetes-dcgm-exporter for dcgm-exporter),
# docs/OBSERVABILITY.md.
generate: setup
	$(VENV)/bin/gpuwarden-rules generate
	$(VENV)/bin/gpuwarden-rules generate --source dcgm-exporter
	$(PY) -m gpuwarden.dashboards.generate
	cp rules/generated/gpuwarden.prometheusrule.yaml deploy/kubernetes/prometheusrule.yaml
	cp rules/generated/dcgm-exporter/gpuwarden.prometheusrule.yaml deploy/kubernetes-dcgm-exporter/prometheusrule.yaml
	sed 's/^  source: gpuwarden$$/  source: dcgm-exporter/' rules/thresholds.yaml > deploy/kubernetes-dcgm-exporter/thresholds.yaml
	$(PY) docs/generate_observability.py

check: setup
	$(VENV)/bin/gpuwarden-rules check
	$(VENV)/bin/gpuwarden-rules check --source dcgm-exporter
	$(PY) -m gpuwarden.dashboards.generate --check
	cmp rules/generated/gpuwarden.prometheusrule.yaml deploy/kubernetes/prometheusrule.yaml
	cmp rules/generated/dcgm-exporter/gpuwarden.prometheusrule.yaml deploy/kubernetes-dcgm-exporter/prometheusrule.yaml
	sed 's/^  source: gpuwarden$$/  source: dcgm-exporter/' rules/thresholds.yaml | cmp - deploy/kubernetes-dcgm-exporter/thresholds.yaml
	$(PY) docs/generate_observability.py --check

bench: setup
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
