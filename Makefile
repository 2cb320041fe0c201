# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create the virtual environment on first use; torch comes first as the CPU wheel 2.13.0.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-random bench bench-batch bench-fast train clean browser

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,ui,ray,lora]'
	touch $@

# The web app's browser test drives Debian's chromium through chromedriver (never a downloaded browser).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || \
			{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; \
		else \
			echo "make test: the browser test needs Debian's chromium and chromium-driver — run: sudo apt-get install -y chromium chromium-driver"; exit 1; \
		fi; \
	fi

demo: $(VENV)/.installed
	$(VENV)/bin/nulltext demo -o demo-out --force

# a worker per core, one torch thread each (faster than one process on both cores), idle workers stealing
# tests (10:31 against 11:27 for one file per worker); tests in their written order (`make test-random` shuffles)
test: $(VENV)/.installed browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist worksteal --durations=12 -p no:randomly

# the suite in a random order of files and tests: make test-random SEED=3 THREADS=2
# (one worker per THREADS cores, so that THREADS=2 tests two torch threads without oversubscribing the cores)
SEED ?= 1
THREADS ?= 1
test-random: $(VENV)/.installed browser
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q -n $$($(PY) -c 'import os; print(max(1, os.cpu_count() // $(THREADS)))') \
		--dist worksteal --randomly-seed=$(SEED)

bench: $(VENV)/.installed
	$(PY) benchmarks/inversion_benchmark.py

bench-batch: $(VENV)/.installed
	$(PY) benchmarks/batch_benchmark.py

bench-fast: $(VENV)/.installed
	$(PY) benchmarks/fast_inversion_benchmark.py --edit-baseline docs/bench/edits.json -o docs/fast_inversion
	$(PY) benchmarks/optimiser_families_benchmark.py -o docs/fast_inversion
	$(PY) benchmarks/end_to_end_benchmark.py --frozen -o docs/fast_inversion
	$(PY) benchmarks/compile_benchmark.py --cold
	$(PY) benchmarks/parameter_walk_benchmark.py

train: $(VENV)/.installed
	$(PY) -m nulltext.bundled.train

clean:
	rm -rf $(VENV) demo-out
