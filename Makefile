# gmia — the two commands a new user needs are `make anonymize` and `make test`.
# Every target installs what it needs first (a local .venv); installing again is a no-op.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
GMIA    := $(VENV)/bin/gmia
STAMP   := $(VENV)/.gmia-installed

DATASET   ?= phantom
DATA_ROOT ?=
CKPT      ?=
PRIVACY   ?= high
OUT       ?= outputs/anonymize/$(DATASET)-$(PRIVACY)
LIMIT     ?= 64

.PHONY: install test test-fast check-report anonymize evaluate mia phantom-data train-phantom bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

# The whole suite, slow end-to-end tests included (that is what CI runs).
test: install
	$(PY) -m pytest -q

# Everything but the tests marked slow, for quick iterations.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The report rendered by a real browser. Chromium is not on PyPI: npm's @sparticuz/chromium carries the browser
# inside the package (no CDN download), so this needs node/npm and the npm registry only. ~70 MB in .cache/.
CHROMIUM_NPM := @sparticuz/chromium@147.0.0 puppeteer-core@24.43.1
check-report: install
	@command -v npm >/dev/null || { echo "make check-report needs node and npm (the browser comes from the npm registry)" >&2; exit 2; }
	npm install --silent --no-audit --no-fund --prefix .cache/chromium $(CHROMIUM_NPM)
	GMIA_NODE_MODULES=.cache/chromium/node_modules $(PY) -m pytest -q tests/evaluation/test_eval_report.py -k chromium -rs

# ---- data -----------------------------------------------------------------------------------------
# The shipped synthetic benchmarks; seeds and sizes come from the presets in gmia/config.py.
data/phantom-cxr64/phantom.json: | install
	$(GMIA) phantom --preset phantom-cxr64 --out data/phantom-cxr64

data/phantom-face64/phantom.json: | install
	$(GMIA) phantom --preset phantom-face64 --out data/phantom-face64

phantom-data: data/phantom-cxr64/phantom.json data/phantom-face64/phantom.json

# ---- the main job -----------------------------------------------------------------------------------
# make anonymize                      the first LIMIT (64) images of the phantom chest X-ray test split, shipped
#                                     weights (LIMIT= for all 800); rerunning finishes or keeps the run (--resume)
# make anonymize DATASET=phantom-face the phantom face test split, shipped weights
# make anonymize DATASET=mimic DATA_ROOT=/data/mimic-cxr-jpg CKPT=/models/gmia-cxr256
#                                     (also chexpert, nih, folder, dicom)
# make anonymize DATASET=folder DATA_ROOT=/data/mine LABELS=/data/mine/labels.csv CKPT=...
#                                     your own folder; LABELS carries its findings into labels.csv (IMAGE_COLUMN=,
#                                     PATIENT_COLUMN=, FINDINGS=a,b name its columns; the patient column only groups)
# make anonymize DATASET=dicom DATA_ROOT=/data/archive CKPT=...
#                                     de-identified DICOM out (FORMAT=png for PNG; docs/dicom.md)
# PRESET= picks another preset for DATASET=folder/dicom/... (default gmia-cxr256; the phantom presets use the
# shipped checkpoints/ when CKPT is unset)
# THREADS=1 when another job shares the CPU (torch's threads oversubscribe a busy core: 448 s instead of 57 s
# for the 64 default images on a 2-core machine with one core taken); unset, torch takes every core
ANON_THREADS = $(if $(filter command line environment,$(origin THREADS)),--threads $(THREADS))
ifeq ($(DATASET),phantom)
anonymize: data/phantom-cxr64/phantom.json
	$(GMIA) anonymize --preset phantom-cxr64 --input data/phantom-cxr64 --split test --privacy $(PRIVACY) --out $(OUT) $(if $(LIMIT),--limit $(LIMIT)) $(ANON_THREADS) --resume
else ifeq ($(DATASET),phantom-face)
anonymize: data/phantom-face64/phantom.json
	$(GMIA) anonymize --preset phantom-face64 --input data/phantom-face64 --split test --privacy $(PRIVACY) --out $(OUT) $(if $(LIMIT),--limit $(LIMIT)) $(ANON_THREADS) --resume
else
ANON_PRESET := $(or $(PRESET),gmia-cxr256)
ANON_CKPT   := $(or $(CKPT),$(if $(filter phantom-%,$(ANON_PRESET)),checkpoints))
ANON_LABELS  = $(if $(LABELS),--labels "$(LABELS)") $(if $(IMAGE_COLUMN),--image-column "$(IMAGE_COLUMN)") \
               $(if $(PATIENT_COLUMN),--patient-column "$(PATIENT_COLUMN)") $(if $(FINDINGS),--findings "$(FINDINGS)")
anonymize: install
	@test -n "$(DATA_ROOT)" || { echo "make anonymize DATASET=$(DATASET) needs DATA_ROOT=<folder of the dataset> (and CKPT=<checkpoint folder>); see README.md, 'Real datasets'." >&2; exit 2; }
	@test -n "$(ANON_CKPT)" || { echo "make anonymize DATASET=$(DATASET) needs CKPT=<checkpoint folder with generator, encoder, identity and utility weights>; see README.md, 'Real datasets'." >&2; exit 2; }
	$(GMIA) anonymize --preset $(ANON_PRESET) --dataset $(DATASET) --data-root "$(DATA_ROOT)" $(ANON_LABELS) $(if $(FORMAT),--output-format $(FORMAT)) --checkpoints "$(ANON_CKPT)" --privacy $(PRIVACY) --out $(OUT) $(ANON_THREADS) --resume
endif

# ---- evidence -----------------------------------------------------------------------------------------
# make evaluate [DATASET=phantom-face]: anonymize LIMIT test images and EVAL_TRAIN training images (the adaptive
# attacker's training set), then attacks, utility, fidelity and record-level privacy -> outputs/eval/... (+ report)
# make mia [DATASET=phantom-face]: membership inference against the stage-1 generator (members: train split,
# non-members: test split, latent prior fitted on val) -> outputs/mia/<preset>/mia.json
EVAL_TRAIN ?= 400
EVAL_PRESET := $(if $(filter phantom-face,$(DATASET)),phantom-face64,phantom-cxr64)
EVAL_OUT    := outputs/eval/$(EVAL_PRESET)
evaluate: data/$(EVAL_PRESET)/phantom.json
	$(GMIA) anonymize --preset $(EVAL_PRESET) --input data/$(EVAL_PRESET) --split test --privacy $(PRIVACY) --out $(EVAL_OUT)/anon-test-$(PRIVACY) --write-linkage --resume $(if $(LIMIT),--limit $(LIMIT)) --quiet
	$(GMIA) anonymize --preset $(EVAL_PRESET) --input data/$(EVAL_PRESET) --split train --privacy $(PRIVACY) --out $(EVAL_OUT)/anon-train-$(PRIVACY) --write-linkage --resume --limit $(EVAL_TRAIN) --quiet
	$(GMIA) evaluate --preset $(EVAL_PRESET) --real data/$(EVAL_PRESET) --anon $(EVAL_OUT)/anon-test-$(PRIVACY) --anon-train $(EVAL_OUT)/anon-train-$(PRIVACY) --out $(EVAL_OUT)/metrics-$(PRIVACY)
	$(GMIA) report $(EVAL_OUT)/metrics-$(PRIVACY)

mia: data/$(EVAL_PRESET)/phantom.json
	$(GMIA) mia --preset $(EVAL_PRESET) --members data/$(EVAL_PRESET) --nonmembers data/$(EVAL_PRESET) --latent-fit data/$(EVAL_PRESET) --out outputs/mia/$(EVAL_PRESET)

# ---- the shipped weights ------------------------------------------------------------------------------
# Reproduces checkpoints/phantom-*/ (hours on a CPU; see each card for the exact commands, times and hardware).
# Order matters: the decoupler is fitted on the MFM's features; the stage-1 acceptance table (written into the
# aegan card) uses the attacker and the utility network. THREADS=1 is fastest on a shared CPU.
THREADS ?= 2
# Stage 1 in three phases: co-training with D (the preset's kimg), then a fidelity fine-tune of E and G alone
# (pixel MSE + 1 - SSIM, no GAN term, D skipped) from the co-trained weights. Refined projection: W+, SSIM term.
# The shipped fine-tune ran 880 kimg in four legs (60 at batch 16 on the CPU; 110 at batch 16, 440 and 270 at
# batch 64 on an H100 with experiments/gpu_finetune_stage1.sh; the chain is in each aegan card under init_from).
# Here it is one leg: about 16 min per preset on an H100 (two presets side by side), roughly 9 h per preset on
# a 2-core CPU (about 37 s/kimg); lower AEGAN_FT_KIMG there for a shorter run.
# Phase 3: the encoder alone (G frozen) for AEGAN_EFT_KIMG_CXR or _FACE, half of each batch drawn as G(w) from the latent
# prior, so E learns to invert G rather than memorize the 700 training patients (test SSIM up, train/test gap
# down; the shipped weights: 60 kimg chest, 220 kimg face, on the CPU at ~33 s/kimg).
# Phase 4, chest only: E (grown to 256 channels) and G on 16 000 new phantom patients, three legs of about 270 kimg
# at batch 64 (experiments/pool_finetune_stage1.sh; the shipped legs ran on an H100). This is what brought the
# chest encoder to SSIM 0.80 on held-out patients; the face encoder passed without it.
AEGAN_FT_KIMG ?= 880
AEGAN_EFT_KIMG_CXR ?= 60
AEGAN_EFT_KIMG_FACE ?= 220
AEGAN_FT_BATCH ?= 64
DEVICE ?=
# the card's refined row: 400 steps at lr 0.05 (faces); the pool-trained chest G needs 600 at lr 0.1 (README)
STAGE1_REFINE ?= --refine-space w+ --lambda-ssim 1 --limit 200
STAGE1_REFINE_CXR ?= --refine-steps 600 --refine-lr 0.1
STAGE1_REFINE_FACE ?= --refine-steps 400 --refine-lr 0.05
train-phantom: phantom-data
	@for p in phantom-cxr64 phantom-face64; do \
	  for role in mfm identity utility attacker; do \
	    $(GMIA) train $$role --preset $$p --threads $(THREADS) --quiet || exit 1; \
	  done; \
	  $(GMIA) fit-decoupler --preset $$p --data data/$$p --out checkpoints/$$p || exit 1; \
	  $(GMIA) train aegan --preset $$p --threads $(THREADS) --out runs/aegan-$$p --resume --quiet || exit 1; \
	  $(GMIA) train aegan --preset $$p --threads $(THREADS) --out runs/aegan-$$p-ft --resume --quiet \
	    --init-from runs/aegan-$$p/checkpoint --lambda-gan 0 --lambda-ssim 1 --kimg $(AEGAN_FT_KIMG) \
	    --batch $(AEGAN_FT_BATCH) $(if $(DEVICE),--device $(DEVICE)) || exit 1; \
	  $(GMIA) fit-prior --preset $$p --data data/$$p --checkpoint runs/aegan-$$p-ft/checkpoint || exit 1; \
	  case $$p in *cxr*) eft=$(AEGAN_EFT_KIMG_CXR);; *) eft=$(AEGAN_EFT_KIMG_FACE);; esac; \
	  $(GMIA) train aegan --preset $$p --threads $(THREADS) --out runs/aegan-$$p-eft --resume --quiet \
	    --init-from runs/aegan-$$p-ft/checkpoint --lambda-gan 0 --lambda-ssim 1 --freeze-generator \
	    --synthetic-fraction 0.5 --kimg $$eft $(if $(DEVICE),--device $(DEVICE)) || exit 1; \
	  cp runs/aegan-$$p-eft/checkpoint/aegan.* checkpoints/$$p/ || exit 1; \
	  case $$p in *cxr*) PY=$(PY) DEVICE=$(DEVICE) experiments/pool_finetune_stage1.sh runs/aegan-$$p-eft/checkpoint \
	    runs/aegan-$$p-pool && cp runs/aegan-$$p-pool/pool3/checkpoint/aegan.* checkpoints/$$p/ || exit 1;; esac; \
	  $(GMIA) fit-prior --preset $$p --data data/$$p || exit 1; \
	  case $$p in *cxr*) refine="$(STAGE1_REFINE_CXR)";; *) refine="$(STAGE1_REFINE_FACE)";; esac; \
	  $(PY) experiments/eval_stage1.py --preset $$p --threads $(THREADS) $(STAGE1_REFINE) $$refine --update-card || exit 1; \
	done

# ---- benchmarks -------------------------------------------------------------------------------------
bench: install
	$(PY) experiments/bench_phantoms.py
	$(PY) experiments/bench_generator.py
	$(PY) experiments/bench_aegan_step.py
	$(PY) experiments/bench_anonymize.py --ref-images 8

clean:
	rm -rf outputs .pytest_cache
