# Two commands do everything on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_workspace
# CPU-sized demo data: BraTS geometry at 1/3.75 resolution.
DEMO_HGG ?= 6
DEMO_LGG ?= 6
DEMO_SHAPE ?= 64 64 48

.PHONY: setup demo demo-data test benchmark clean

setup: $(STAMP)

# The pinned CPU torch wheel goes in first, so nothing can pull a CUDA build; constraints.txt pins the rest.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	touch $@

demo-data: setup
	$(BIN)/brats-fl make-data --out $(DEMO_DIR)/brats --hgg $(DEMO_HGG) --lgg $(DEMO_LGG) --shape $(DEMO_SHAPE)
	$(BIN)/brats-fl check-data $(DEMO_DIR)/brats

demo: demo-data
	@echo "Demo data is ready and checked under $(DEMO_DIR)/brats."
	@echo "The federated BraTS job (jobs/brats_fl) is not built yet, so the demo stops here."

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(DEMO_DIR)
