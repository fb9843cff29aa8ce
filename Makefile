# Every target creates .venv when needed and installs only what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo-data

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps record which extras are installed; they are redone when pyproject.toml changes.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# torch==2.13.0 is the CPU build (a plain "torch" would fetch a large CUDA build).
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.train: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[train,serve]'
	touch $@

# The benchmarks also compare with ROOT's own loader (the PyPI "root" wheel).
$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[xrootd,train,keras,sklearn,serve,dask]' 'tritonclient[http,grpc]' xgboost-cpu onnxmltools root
	touch $@

demo: $(VENV)/.train
	$(BIN)/mlaas4hep generate $(DEMO) --events 20000 --seed 42
	$(BIN)/mlaas4hep inspect $(DEMO)/signal_0.root:Events --branches 'Jet_*,Muon_pt,MET_*,nPFCands'
	$(BIN)/mlaas4hep stream $(DEMO)/files.txt --labels $(DEMO)/labels.txt \
		--branches 'Jet_*,Muon_*,Electron_*,MET_*,PV_npvs' --step-size 5000 --epochs 2
	$(BIN)/mlaas4hep scan $(DEMO)/files.txt --labels $(DEMO)/labels.txt \
		--branches 'Jet_*,Muon_*,Electron_*,MET_*,PV_npvs,nJet' --length q0.95 \
		--log 'Jet_pt,MET_pt' -o $(DEMO)/features.json
	$(BIN)/mlaas4hep convert $(DEMO)/files.txt --labels $(DEMO)/labels.txt \
		--specs $(DEMO)/features.json --out $(DEMO)/tensors.npz
	$(BIN)/mlaas4hep train --files $(DEMO)/files.txt --labels $(DEMO)/labels.txt \
		--model examples/ex_pytorch.py --params examples/params.json --fout $(DEMO)/run
	$(BIN)/python examples/serve_and_query.py $(DEMO)/run/model $(DEMO)/signal_0.root
	$(BIN)/mlaas4hep predict --model $(DEMO)/run/model --files $(DEMO)/files.txt \
		--out $(DEMO)/scores.parquet

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/streaming.py
	$(BIN)/python benchmarks/transform.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/loader.py --epochs 5 --workloads small
	$(BIN)/python benchmarks/open_tree.py
	$(BIN)/python benchmarks/train_models.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python -P benchmarks/serving_instructions.py
	$(BIN)/python -P benchmarks/triton.py
	$(BIN)/python -P benchmarks/predict.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache
