# Adaptive ranking on Triton: `make` lists the targets.

PY := .venv/bin/python
PRESET ?= small
DATA ?= world
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002

.DEFAULT_GOAL := help
.PHONY: help venv serve export demo test lint ml100k-table ml100k-fp8

help: ## List the targets
	@grep -E '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

venv: .venv/.installed ## Create .venv (Python 3.11), install requirements.txt, requirements-data.txt (--no-deps) and this project (+ libb64 for perf_analyzer)

.venv/.installed: requirements.txt requirements-data.txt pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if command -v python3.11 >/dev/null 2>&1; then py=python3.11; \
	  elif python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then py=python3; \
	  else echo "Python 3.11 is required (python3.11, or python3 being 3.11)" >&2; exit 1; fi; \
	  echo "creating .venv with $$py"; $$py -m venv .venv; \
	fi
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-data.txt
	$(PY) -m pip install --no-deps -e .
	@if dpkg -s libb64-0d >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y libb64-0d || { apt-get update && apt-get install -y libb64-0d; }; \
	else echo "warning: perf_analyzer needs libb64-0d (apt-get install libb64-0d as root)" >&2; fi
	touch $@

serve: venv ## Run Triton on model_repository (HTTP_PORT, GRPC_PORT, METRICS_PORT)
	$(PY) -m serving.server --model-repository model_repository --config-name cpu \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

export: venv ## Train and export into model_repository (PRESET=small); DATA=ml-100k: MovieLens-100k, served evaluation, reports/export-ml-100k.json
ifeq ($(DATA),ml-100k)
	$(PY) -m export.ml100k
	$(PY) -m client.ml100k_eval
	$(PY) -m export.ml100k --table
else
	$(PY) -m export.build --preset $(PRESET)
endif

demo: venv ## Export the small preset and run the client demo; DATA=ml-100k: a real user's next movies
ifeq ($(DATA),ml-100k)
	test -f build/ml-100k/model_repository/scorer_heavy/1/model.onnx || $(PY) -m export.ml100k
	$(PY) -m client.ml100k_demo
else
	$(PY) -m export.build --preset small
	$(PY) -m client.demo
endif

ml100k-fp8: venv ## FP8 sensitivity + selective PTQ on MovieLens-100k (after make export DATA=ml-100k): full-ranking drops vs FP32
	$(PY) -m export.ml100k_fp8

ml100k-table: venv ## Print the README's MovieLens-100k table from reports/export-ml-100k.json
	$(PY) -m export.ml100k --table

test: venv deploy-tools ## Lint, export the tiny preset and run the tests (deploy checks and the short Ray scale test included)
	.venv/bin/ruff check .
	.venv/bin/hadolint Dockerfile
	$(PY) -m export.build --preset tiny
	$(PY) -m pytest -q

lint: venv ## Lint with ruff
	.venv/bin/ruff check .

.PHONY: fp8 lint-docker image-check

fp8: venv ## Train/export PRESET, then FP8 PTQ: serve FP8 QDQ graphs, reports/fp8.{json,md}
	$(PY) -m export.build --preset $(PRESET) --fp8

lint-docker: venv ## Lint the Dockerfile with hadolint
	.venv/bin/hadolint Dockerfile

image-check: venv ## The image without Docker: hadolint, requirements-image.txt resolved by pip for its Python/platform (needs PyPI, ~1.5 min)
	.venv/bin/hadolint Dockerfile
	$(PY) -m pytest -q tests/test_image.py tests/test_image_resolve.py tests/test_preflight.py tests/test_runtime_repo.py
	$(PY) -m export.image_resolve
	$(PY) -m export.image_resolve --expect-conflict tests/data/requirements-image-conflict.txt

.PHONY: bench bench-smoke

bench: venv ## perf_analyzer sweep + capacity (batched vs unbatched, open loop) of PRESET=small -> perf/results/
	$(PY) -m perf.sweep --profile full --preset $(PRESET) --results perf/results
	$(PY) -m perf.capacity --profile full --results perf/results
	$(PY) -m perf.summary --results perf/results
	$(PY) -m perf.plots --results perf/results
	$(PY) -m perf.report --results perf/results

bench-smoke: venv ## Tiny perf sweep for CI (N 16, 64; concurrency 1) -> perf/results/smoke/
	$(PY) -m perf.sweep --profile smoke --results perf/results/smoke
	$(PY) -m perf.capacity --profile smoke --results perf/results/smoke
	$(PY) -m perf.summary --results perf/results/smoke
	$(PY) -m perf.plots --results perf/results/smoke
	$(PY) -m perf.report --results perf/results/smoke

.PHONY: profile

profile: venv ## Per-model Triton statistics and py-spy of every stub under load (ROUTE=heavy, N=1024) -> perf/results/profile/
	$(PY) -m perf.stub_profile --route $(or $(ROUTE),heavy) --n $(or $(N),1024)

.PHONY: bursts

bursts: venv ## Bursts of 16 at once, as shipped vs with a Triton queue policy (the 500 ms batcher stall) -> perf/results/bursts.json
	mkdir -p perf/results
	$(PY) -m perf.bursts --preset $(PRESET) > perf/results/bursts.json
	cat perf/results/bursts.json

.PHONY: soak

soak: venv ## Soak: 10,000 requests at concurrency 32 on every route; errors, answers, memory; auto budget misses (c 32, 8)
	$(PY) -m perf.soak --requests 10000 --concurrency 32 --json perf/results/soak.json
	$(PY) -m perf.soak --requests 10000 --concurrency 32 --routes auto --json perf/results/soak-auto.json
	$(PY) -m perf.soak --requests 10000 --concurrency 32 --routes auto --load-unaware --json perf/results/soak-auto-unaware.json
	$(PY) -m perf.soak --requests 4000 --concurrency 8 --routes auto --json perf/results/soak-auto-c8.json
	$(PY) -m perf.soak --requests 4000 --concurrency 8 --routes auto --load-unaware --json perf/results/soak-auto-c8-unaware.json

.PHONY: deploy-venv deploy-tools deploy-validate deploy-check

deploy-venv: .venv/.deploy-installed ## Install requirements-deploy.txt (ray[serve], kubernetes-validate) into .venv beside requirements.txt

# One resolver run over both files: the pins of requirements.txt hold, pip only adds packages.
.venv/.deploy-installed: .venv/.installed requirements-deploy.txt
	$(PY) -m pip install -r requirements.txt -r requirements-deploy.txt
	@# recbole is installed --no-deps for its data files only (requirements-data.txt): its own
	@# requirements are not wanted, so pip check's lines about it are left out; any other fails.
	@problems="$$($(PY) -m pip check | grep -v '^recbole ' | grep -v '^No broken requirements' || true)"; \
	if [ -n "$$problems" ]; then echo "$$problems" >&2; exit 1; fi
	touch $@

deploy-tools: deploy-venv build/tools/helm build/tools/promtool ## deploy-venv, plus helm (npm registry) and promtool (Debian's prometheus .deb) in build/tools

build/tools/helm: deploy/tools/install-helm.sh
	@if ! command -v npm >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y npm || { apt-get update && apt-get install -y npm; }; \
	  else echo "helm comes from the npm registry: install npm (apt-get install npm)" >&2; exit 1; fi; \
	fi
	deploy/tools/install-helm.sh build/tools
	touch $@

build/tools/promtool: deploy/tools/install-promtool.sh
	deploy/tools/install-promtool.sh build/tools
	touch $@

deploy-validate: deploy-tools ## Offline checks of deploy/: helm lint/template, Kubernetes + CRD schemas, serveConfigV2, PromQL
	$(PY) -m deploy.checks

deploy-check: deploy-tools ## All deploy checks: offline ones, the queue-time signal on a real server, the full Ray Serve scale test (1 -> 3 -> 1)
	$(PY) -m export.build --preset tiny
	$(PY) -m deploy.checks
	$(PY) -m pytest -q tests/test_deploy_manifests.py tests/test_deploy_promql.py tests/test_queue_signal.py tests/test_ray_serve.py -k "not scale_out"
	$(PY) -m deploy.ray_serve.scale_test --preset full --json build/deploy/ray-scale-full.json
