# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create the virtual environment on first use; torch comes first as the CPU wheel 2.13.0.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench bench-batch train clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/nulltext demo -o demo-out --force

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/inversion_benchmark.py

bench-batch: $(VENV)/.installed
	$(PY) benchmarks/batch_benchmark.py

train: $(VENV)/.installed
	$(PY) -m nulltext.bundled.train

clean:
	rm -rf $(VENV) demo-out
