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
# the phantom presets start from a re-drawn code, whose level is medium (docs/defaults.md); E(x) starts: high
PRIVACY   ?= $(if $(filter phantom phantom-face,$(DATASET)),medium,high)
TARGET_AUC ?=
# the privacy knob: a named level, or TARGET_AUC=0.9 (the adaptive attacker's expected AUC, from the calibration
# table of the preset's level, or of PRIVACY=<level> when given on the command line)
PRIVACY_GIVEN = $(filter command line,$(origin PRIVACY))
KNOB      = $(if $(TARGET_AUC),auc$(TARGET_AUC)$(if $(PRIVACY_GIVEN),-$(PRIVACY)),$(PRIVACY))
ANON_KNOB = $(if $(TARGET_AUC),--target-auc $(TARGET_AUC)$(if $(PRIVACY_GIVEN), --privacy $(PRIVACY)),--privacy $(PRIVACY))
OUT       ?= outputs/anonymize/$(DATASET)-$(KNOB)$(if $(ENGINE),-$(ENGINE))
LIMIT     ?= 64

.PHONY: install test test-fast check-report anonymize evaluate calibrate mia phantom-data train-phantom train bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,ray]'
	@touch $@

# The whole suite, slow end-to-end tests included (that is what CI runs), on one worker process per core (at most
# 4; each test runs torch on one thread; idle workers take queued tests from busy ones). TEST_WORKERS=0 runs it in
# this process.
TEST_WORKERS ?= auto
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist worksteal

# Everything but the tests marked slow, for quick iterations.
test-fast: install
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --maxprocesses 4 --dist worksteal

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
# ENGINE=amortized: one pass of the preset's anonymizer network per image (ENGINE=optimize: the per-image optimizer)
# THREADS=1 when another job shares the CPU (torch's threads oversubscribe a busy core: 448 s instead of 57 s
# for the 64 default images on a 2-core machine with one core taken); unset, torch takes every core
ANON_THREADS = $(if $(filter command line environment,$(origin THREADS)),--threads $(THREADS))
ANON_ENGINE  = $(if $(ENGINE),--engine $(ENGINE))
ifeq ($(DATASET),phantom)
anonymize: data/phantom-cxr64/phantom.json
	$(GMIA) anonymize --preset phantom-cxr64 --input data/phantom-cxr64 --split test $(ANON_KNOB) --out $(OUT) $(if $(LIMIT),--limit $(LIMIT)) $(ANON_THREADS) $(ANON_ENGINE) --resume
else ifeq ($(DATASET),phantom-face)
anonymize: data/phantom-face64/phantom.json
	$(GMIA) anonymize --preset phantom-face64 --input data/phantom-face64 --split test $(ANON_KNOB) --out $(OUT) $(if $(LIMIT),--limit $(LIMIT)) $(ANON_THREADS) $(ANON_ENGINE) --resume
else
ANON_PRESET := $(or $(PRESET),gmia-cxr256)
ANON_CKPT   := $(or $(CKPT),$(if $(filter phantom-%,$(ANON_PRESET)),checkpoints))
ANON_LABELS  = $(if $(LABELS),--labels "$(LABELS)") $(if $(IMAGE_COLUMN),--image-column "$(IMAGE_COLUMN)") \
               $(if $(PATIENT_COLUMN),--patient-column "$(PATIENT_COLUMN)") $(if $(FINDINGS),--findings "$(FINDINGS)")
anonymize: install
	@test -n "$(DATA_ROOT)" || { echo "make anonymize DATASET=$(DATASET) needs DATA_ROOT=<folder of the dataset> (and CKPT=<checkpoint folder>); see README.md, 'Real datasets'." >&2; exit 2; }
	@test -n "$(ANON_CKPT)" || { echo "make anonymize DATASET=$(DATASET) needs CKPT=<checkpoint folder with generator, encoder, identity and utility weights>; see README.md, 'Real datasets'." >&2; exit 2; }
	$(GMIA) anonymize --preset $(ANON_PRESET) --dataset $(DATASET) --data-root "$(DATA_ROOT)" $(ANON_LABELS) $(if $(FORMAT),--output-format $(FORMAT)) --checkpoints "$(ANON_CKPT)" $(ANON_KNOB) --out $(OUT) $(ANON_THREADS) $(ANON_ENGINE) --resume
endif

# ---- evidence -----------------------------------------------------------------------------------------
# make evaluate [DATASET=phantom-face]: anonymize LIMIT test images and EVAL_TRAIN training images (the adaptive
# attacker's training set), then attacks, utility, fidelity and record-level privacy -> outputs/eval/... (+ report)
# make mia [DATASET=phantom-face]: membership inference against the stage-1 generator (members: train split,
# non-members: test split, latent prior fitted on val) -> outputs/mia/<preset>/mia.json
EVAL_TRAIN ?= 400
# the attacker's own patients: training patients, except for the amortized engine, whose network was trained on
# them (its outputs there are not what it does for a stranger): validation patients
EVAL_SPLIT ?= $(if $(filter amortized,$(ENGINE)),val,train)
EVAL_PRESET := $(if $(filter phantom-face,$(DATASET)),phantom-face64,phantom-cxr64)
# PHANTOM_SEED=N: evaluate on a fresh draw of the phantom benchmark (data/<preset>-seedN), whose patients no shipped
# network has seen, in any split: the adaptive attacker's and the classifiers' training images are new too
PHANTOM_SEED ?=
EVAL_DATA   := data/$(EVAL_PRESET)$(if $(PHANTOM_SEED),-seed$(PHANTOM_SEED))
EVAL_OUT    := outputs/eval/$(EVAL_PRESET)$(if $(ENGINE),-$(ENGINE))$(if $(PHANTOM_SEED),-seed$(PHANTOM_SEED))
ifneq ($(PHANTOM_SEED),)
$(EVAL_DATA)/phantom.json: | install
	$(GMIA) phantom --preset $(EVAL_PRESET) --seed $(PHANTOM_SEED) --out $(EVAL_DATA)
endif
evaluate: $(EVAL_DATA)/phantom.json
	$(GMIA) anonymize --preset $(EVAL_PRESET) --input $(EVAL_DATA) --split test $(ANON_KNOB) --out $(EVAL_OUT)/anon-test-$(KNOB) --write-linkage --resume $(if $(LIMIT),--limit $(LIMIT)) $(ANON_THREADS) $(ANON_ENGINE) --quiet
	$(GMIA) anonymize --preset $(EVAL_PRESET) --input $(EVAL_DATA) --split $(EVAL_SPLIT) $(ANON_KNOB) --out $(EVAL_OUT)/anon-$(EVAL_SPLIT)-$(KNOB) --write-linkage --resume --limit $(EVAL_TRAIN) $(ANON_THREADS) $(ANON_ENGINE) --quiet
	$(GMIA) evaluate --preset $(EVAL_PRESET) --real $(EVAL_DATA) --anon $(EVAL_OUT)/anon-test-$(KNOB) --anon-train $(EVAL_OUT)/anon-$(EVAL_SPLIT)-$(KNOB) --out $(EVAL_OUT)/metrics-$(KNOB) $(ANON_THREADS)
	$(GMIA) report $(EVAL_OUT)/metrics-$(KNOB)

# make calibrate [DATASET=phantom-face]: the adaptive attacker's AUC and utility at re-draw strengths 0, 0.5, 0.75, 1
# on validation patients, at PRIVACY's level -> checkpoints/<preset>/calibration.json (one table per level),
# which `make anonymize TARGET_AUC=0.9 [PRIVACY=level]` reads
calibrate: data/$(EVAL_PRESET)/phantom.json
	$(GMIA) calibrate --preset $(EVAL_PRESET) --data data/$(EVAL_PRESET) --privacy $(PRIVACY) $(ANON_THREADS)

mia: data/$(EVAL_PRESET)/phantom.json
	$(GMIA) mia --preset $(EVAL_PRESET) --members data/$(EVAL_PRESET) --nonmembers data/$(EVAL_PRESET) --latent-fit data/$(EVAL_PRESET) --out outputs/mia/$(EVAL_PRESET)

# ---- the shipped weights ------------------------------------------------------------------------------
# make train-phantom: reproduces checkpoints/phantom-*/ with `gmia fit` on the phantom folders. The recipe is data
# (gmia/fit/recipe.py, `gmia fit --preset P --dry-run` lists it): the five scoring networks, the decoupler, stage 1
# in the legs its aegan card records (co-training; a fidelity fine-tune in four legs, 880 kimg; the encoder
# fine-tune on its latent prior; for the chest preset E grown and G on a pool of 16 000 new phantom patients, 818
# kimg), the latent prior and the stage-1 report. Each stage resumes and is skipped once its card carries its key,
# so rerunning finishes or does nothing. About a day per preset on a 2-core CPU (stage 1 at ~37 s/kimg on one
# core); DEVICE=cuda trains on a GPU (the legs the cards record ran at 1.0-1.6 s/kimg on an H100); THREADS=1 is
# fastest on a shared CPU. Run folders and caches go to FIT_ROOT/<preset>/ (the chest pool: 64 000 images); the
# weights and cards are then copied into checkpoints/<preset>/, and the latent split (`--redraw`), the domain
# guard and the amortized engine's network are fitted to them (each refuses to load beside weights it was not
# fitted to).
THREADS  ?= 2
DEVICE   ?=
FIT_ROOT ?= runs/fit
FIT_MACHINE = --threads $(THREADS) $(if $(DEVICE),--device $(DEVICE))
train-phantom: phantom-data
	@for p in phantom-cxr64 phantom-face64; do \
	  $(GMIA) fit --preset $$p --input data/$$p --out $(FIT_ROOT)/$$p $(FIT_MACHINE) --quiet || exit 1; \
	  for n in identity utility utility2 mfm attacker decoupler aegan latent-prior; do \
	    test -f $(FIT_ROOT)/$$p/$$n.json || [ $$n != utility2 ] || continue; \
	    cp $(FIT_ROOT)/$$p/$$n.safetensors $(FIT_ROOT)/$$p/$$n.json checkpoints/$$p/ || exit 1; \
	  done; \
	  $(GMIA) fit-split --preset $$p --data data/$$p $(FIT_MACHINE) || exit 1; \
	  $(GMIA) fit-domain --preset $$p --data data/$$p $(FIT_MACHINE) || exit 1; \
	  $(GMIA) train anonymizer --preset $$p --data data/$$p $(FIT_MACHINE) --quiet || exit 1; \
	done

# ---- your own data ---------------------------------------------------------------------------------------------
# make train DATASET=mimic DATA_ROOT=/data/mimic-cxr-jpg OUT=/models/mimic     (also chexpert, nih)
# make train DATASET=folder DATA_ROOT=/data/mine LABELS=/data/mine/findings.csv OUT=/models/mine
#                                     (IMAGE_COLUMN=, PATIENT_COLUMN=, FINDINGS=a,b name the CSV's columns)
# make train DATASET=dicom DATA_ROOT=/data/archive LABELS=... OUT=/models/archive
# trains every network of PRESET (default gmia-cxr256) into OUT with `gmia fit`; then
# make anonymize DATASET=... DATA_ROOT=... CKPT=/models/mimic. Rerun to resume. FIT_FLAGS= passes more options
# (e.g. FIT_FLAGS="--set aegan.kimg=2000"); `gmia fit --dry-run` lists the stages.
TRAIN_PRESET := $(or $(PRESET),gmia-cxr256)
TRAIN_LABELS  = $(if $(LABELS),--labels "$(LABELS)") $(if $(IMAGE_COLUMN),--image-column "$(IMAGE_COLUMN)") \
                $(if $(PATIENT_COLUMN),--patient-column "$(PATIENT_COLUMN)") $(if $(FINDINGS),--findings "$(FINDINGS)")
train: install
	@test "$(filter phantom%,$(DATASET))" = "" || { echo "make train is for your own data (DATASET=mimic|chexpert|nih|folder|dicom); the phantom weights: make train-phantom" >&2; exit 2; }
	@test -n "$(DATA_ROOT)" || { echo "make train DATASET=$(DATASET) needs DATA_ROOT=<folder of the dataset>; see README.md, 'Train on your own data'." >&2; exit 2; }
	@test "$(filter command line environment,$(origin OUT))" != "" || { echo "make train needs OUT=<checkpoint folder to fill> (then: make anonymize ... CKPT=<that folder>)" >&2; exit 2; }
	$(GMIA) fit --preset $(TRAIN_PRESET) --dataset $(DATASET) --data-root "$(DATA_ROOT)" $(TRAIN_LABELS) --out "$(OUT)" $(ANON_THREADS) $(if $(DEVICE),--device $(DEVICE)) $(FIT_FLAGS)

# ---- benchmarks -------------------------------------------------------------------------------------
bench: install
	$(PY) experiments/bench_phantoms.py
	$(PY) experiments/bench_generator.py
	$(PY) experiments/bench_aegan_step.py
	$(PY) experiments/bench_anonymize.py --ref-images 8

clean:
	rm -rf outputs .pytest_cache
