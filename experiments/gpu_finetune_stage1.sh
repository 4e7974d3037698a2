#!/usr/bin/env bash
# Stage-1 fidelity fine-tune (the recipe's second phase: lambda_gan 0, lambda_ssim 1) of both phantom presets
# side by side on one GPU, sized to a wall-clock budget. This is how the shipped aegan weights were trained longer
# than the CPU allows;
# `make train-phantom` runs the same phase anywhere (its legs: `gmia fit --preset P --dry-run`).
#
#   experiments/gpu_finetune_stage1.sh BUDGET_SECONDS RUN_ROOT [INIT_ROOT [EXTRA TRAIN FLAGS...]]
#
# 1. generates the phantom data (same seeds as everywhere else) if it is missing;
# 2. times 2 kimg of both runs together, to learn sec/kimg with the GPU shared the same way;
# 3. trains both for the kimg that fits what is left of the budget, from INIT_ROOT/<preset> (default
#    checkpoints/<preset>, the shipped weights), and exports RUN_ROOT/aegan-<preset>/checkpoint/.
#
# The chest encoder's last step (a pool of new patients) is experiments/pool_finetune_stage1.sh.
set -euo pipefail
budget=${1:?budget in seconds}; root=${2:?run root}; init_root=${3:-checkpoints}
shift $(( $# < 3 ? $# : 3 ))
start=$(date +%s)
presets="phantom-cxr64 phantom-face64"
for p in $presets; do
  [ ! -e $root/aegan-$p ] || { echo "$root/aegan-$p exists; choose another RUN_ROOT" >&2; exit 2; }
done
gmia() { python3 -m gmia "$@"; }
pids=""
ft_flags="--lambda-gan 0 --lambda-ssim 1 --device cuda --quiet $*"

for p in $presets; do
  [ -f data/$p/phantom.json ] || gmia phantom --preset $p --out data/$p &
done
wait

for p in $presets; do
  rm -rf $root/time-$p
  gmia train aegan --preset $p --out $root/time-$p --init-from $init_root/$p $ft_flags --kimg 2 \
    >/dev/null &
done
wait
spk=$(python3 - "$root" $presets <<'PY'
import json, sys
root, presets = sys.argv[1], sys.argv[2:]
# the slower run sets the pace; the last tick's time excludes start-up
print(max(json.loads(open(f"{root}/time-{p}/stats.jsonl").read().splitlines()[-1])["sec_per_tick"] for p in presets))
PY
)
left=$(( budget - ($(date +%s) - start) - 45 ))   # 45 s: start-up, export, copying back
kimg=$(python3 -c "print(max(int($left / $spk) // 10 * 10, 10))")
echo "timing: $spk s/kimg with both runs on the GPU; $left s left -> $kimg kimg each"

for p in $presets; do
  gmia train aegan --preset $p --out $root/aegan-$p --init-from $init_root/$p $ft_flags \
    --kimg $kimg > $root/aegan-$p.out 2>&1 &
  pids="$pids $!"
done
for pid in $pids; do wait $pid || { echo "a training run failed; see $root/aegan-*.out" >&2; exit 1; }; done
for p in $presets; do tail -2 $root/aegan-$p/log.txt; done
echo "total $(( $(date +%s) - start )) s"
