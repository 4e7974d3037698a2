#!/usr/bin/env bash
# Stage 2 on a GPU: the batched engine, the fast profile and the published per-image loop on the same phantom
# test images (experiments/bench_anonymize.py), then whole `gmia anonymize` runs (privacy gate, files, manifest)
# at bf16 and fp32, for both phantom presets. Prints one table per step.
#
#   experiments/gpu_stage2.sh [OUT_DIR]          # OUT_DIR default outputs/gpu-stage2; needs a CUDA device
#   BATCH=256 IMAGES=800 REF_IMAGES=32 experiments/gpu_stage2.sh
#   DEVICE=cpu BATCH=4 IMAGES=4 REF_IMAGES=1 REF_STEPS=20 experiments/gpu_stage2.sh runs/s2-cpu   # check the logic on a CPU
set -euo pipefail
out=${1:-outputs/gpu-stage2}
py=${PY:-python3}
batch=${BATCH:-256}
images=${IMAGES:-800}
ref=${REF_IMAGES:-32}
ref_steps=${REF_STEPS:-1000}
device=${DEVICE:-cuda}
mkdir -p "$out"
[ "$device" != cuda ] || $py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"
for preset in phantom-cxr64 phantom-face64; do
  [ -f data/$preset/phantom.json ] || $py -m gmia phantom --preset $preset --out data/$preset >/dev/null
  echo "== $preset: bench_anonymize (engine / engine-fast / published loop), batch $batch"
  $py experiments/bench_anonymize.py --preset $preset --data data/$preset --device "$device" --images "$images" \
      --ref-images "$ref" --ref-steps "$ref_steps" --batch-size "$batch" --json "$out/bench-$preset.json"
  for precision in auto fp32; do   # auto = bf16 autocast on CUDA (fp32 on a CPU); the gate is fp32 either way
    echo "== $preset: gmia anonymize --precision $precision, batch $batch, $images test images"
    rm -rf "$out/anon-$preset-$precision"
    $py -m gmia anonymize --preset $preset --input data/$preset --split test --limit "$images" --device "$device" \
        --batch-size "$batch" --precision $precision --quiet --out "$out/anon-$preset-$precision" \
        > "$out/anon-$preset-$precision.log"
    head -1 "$out/anon-$preset-$precision.log"   # the run's summary line (released / withheld / errors, img/s)
  done
done
