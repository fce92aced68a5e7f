# Two commands do everything on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHIPPED := $(VENV)/.shipped
DEMO_DIR ?= demo_workspace
# CPU-sized demo: BraTS geometry at 2.5 mm voxels, the committed job with fewer rounds and a smaller crop.
# Rounds of ~30 s keep FLARE's per-round overhead (~1 s, benchmarks/results/flare_overhead.md) near 3%.
DEMO_HGG ?= 28
DEMO_LGG ?= 28
DEMO_SHAPE ?= 96 96 64
DEMO_ROUNDS ?= 12
# Two clients share this machine's cores in the simulator: one PyTorch thread each. A 12-round run needs a larger
# step than the seed's 600 rounds: lr 5e-4 (docs/benchmarks.md, "A longer CPU run", compares it with the seed's 1e-4).
DEMO_SETTINGS ?= --set num_workers=0 --set num_threads=1 --set lr=5e-4
# The BraTS job in a real local federation: server and 2 clients as separate processes from mutual-TLS startup
# kits (DEPLOY_KITS=poc: `nvflare poc prepare` into poc_workspace/ws; provision: `nvflare provision`), the job
# submitted and followed through the FLARE API, results downloaded, everything stopped. Demo data, 3 rounds.
DEPLOY_KITS ?= poc
DEPLOY_ROUNDS ?= 3
DEPLOY_WORKSPACE ?= $(if $(filter poc,$(DEPLOY_KITS)),poc_workspace/ws,$(DEMO_DIR)/kits)
# Metastasis demo (single-site job): 6 small generated training slides, 100 tumour patches per tumour slide,
# 224-pixel patches as the seed; rounds of one epoch (~25 s here). Patches are read in the training process: on
# 2 cores a DataLoader worker competes with PyTorch's threads (benchmarks/results/patch_training.md).
PATHO_DIR ?= $(DEMO_DIR)/pathology
PATHO_TUMOR ?= 4
PATHO_NORMAL ?= 2
PATHO_SIZE ?= 8192 6144
PATHO_PATCHES ?= 100
PATHO_ROUNDS ?= 5
PATHO_SETTINGS ?= --set num_workers=0 --set num_threads=2
# Part 2 on a generated test set: tissue masks -> probability maps (stride 32, tiled) -> detections -> FROC + AUC.
PATHO_TEST_TUMOR ?= 3
PATHO_TEST_NORMAL ?= 3

.PHONY: setup demo demo-data federation-demo pathology-demo test clean

setup: $(STAMP) $(SHIPPED)

# The pinned CPU torch wheel goes in first, so nothing can pull a CUDA build; constraints.txt pins the rest.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	touch $@

# The committed jobs are their recipes' exports; exporting again adds the project's code to their app/custom
# (FLARE ships it to the sites; git keeps only the configuration), so `nvflare simulator jobs/brats_fl` runs.
$(SHIPPED): $(STAMP) $(shell find custom jobs -name '*.py')
	$(BIN)/python jobs/brats_fl/job.py --export --export-dir jobs
	$(BIN)/python jobs/pathology_metastasis/job.py --export --export-dir jobs
	touch $@

demo-data: setup
	$(BIN)/brats-fl make-data --out $(DEMO_DIR)/brats --hgg $(DEMO_HGG) --lgg $(DEMO_LGG) --shape $(DEMO_SHAPE)
	$(BIN)/brats-fl datalist $(DEMO_DIR)/brats

# The BraTS job as users run it: jobs/brats_fl/job.py in FLARE's simulator (run folder simulation/brats_fl), then
# the cross-site report, printed and written to report/.
demo: demo-data
	$(BIN)/python jobs/brats_fl/job.py --workspace $(DEMO_DIR)/simulation --rounds $(DEMO_ROUNDS) --crop $(DEMO_SHAPE) \
		--data-root $(abspath $(DEMO_DIR)/brats) $(DEMO_SETTINGS) --report $(DEMO_DIR)/report

federation-demo: demo-data
	$(BIN)/brats-fl make-job --out $(DEMO_DIR)/deploy_job --rounds $(DEPLOY_ROUNDS) --crop $(DEMO_SHAPE) \
		--data-root $(abspath $(DEMO_DIR)/brats) --datalist-dir $(abspath $(DEMO_DIR)/brats/datalists) $(DEMO_SETTINGS)
	$(BIN)/brats-fl deploy $(DEMO_DIR)/deploy_job --kits $(DEPLOY_KITS) --workspace $(DEPLOY_WORKSPACE) \
		--project provisioning/brats_project.yml --out $(DEMO_DIR)/deploy_report

# Slides -> tissue masks -> patch list -> single-site FLARE job (train, best model, cross-site validation), then
# the trained best global model on a generated test set: maps, detections, FROC and slide AUC.
pathology-demo: setup
	$(BIN)/metastasis make-data --out $(PATHO_DIR)/camelyon16 --tumor $(PATHO_TUMOR) --normal $(PATHO_NORMAL) \
		--width $(word 1,$(PATHO_SIZE)) --height $(word 2,$(PATHO_SIZE)) --workers 2
	$(BIN)/metastasis tissue $(PATHO_DIR)/camelyon16/training --out $(PATHO_DIR)/camelyon16/tissue_masks
	$(BIN)/metastasis patches --data-root $(PATHO_DIR)/camelyon16 --masks $(PATHO_DIR)/camelyon16/tissue_masks \
		--tumor-per-slide $(PATHO_PATCHES) --validation-fraction 0.25 --out $(PATHO_DIR)/camelyon16/patches.json
	$(BIN)/python jobs/pathology_metastasis/job.py --workspace $(PATHO_DIR)/simulation --rounds $(PATHO_ROUNDS) \
		--data-root $(abspath $(PATHO_DIR)/camelyon16) --patch-list $(abspath $(PATHO_DIR)/camelyon16/patches.json) \
		$(PATHO_SETTINGS) --report $(PATHO_DIR)/report
	$(BIN)/metastasis make-data --out $(PATHO_DIR)/camelyon16 --split testing --tumor $(PATHO_TEST_TUMOR) \
		--normal $(PATHO_TEST_NORMAL) --width $(word 1,$(PATHO_SIZE)) --height $(word 2,$(PATHO_SIZE)) --workers 2 --seed 1
	$(BIN)/metastasis tissue $(PATHO_DIR)/camelyon16/testing/images --out $(PATHO_DIR)/camelyon16/testing_tissue
	$(BIN)/metastasis infer $(PATHO_DIR)/camelyon16/testing/images --masks $(PATHO_DIR)/camelyon16/testing_tissue \
		--checkpoint $(PATHO_DIR)/simulation/pathology_metastasis/server/simulate_job/app_server/best_FL_global_model.pt \
		--out $(PATHO_DIR)/maps --overwrite
	$(BIN)/metastasis detect $(PATHO_DIR)/maps --out $(PATHO_DIR)/detections
	$(BIN)/metastasis evaluate $(PATHO_DIR)/camelyon16/testing/images --detections $(PATHO_DIR)/detections \
		--annotations $(PATHO_DIR)/camelyon16/testing/lesion_annotations --maps $(PATHO_DIR)/maps \
		--reference $(PATHO_DIR)/camelyon16/testing/reference.csv --out $(PATHO_DIR)/froc

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(DEMO_DIR)
