#!/usr/bin/env bash
# Several stage-1 fine-tunes of the chest preset side by side on one GPU, each stopped on a wall clock and
# exported, then scored on the val and test splits: how each leg of experiments/pool_finetune_stage1.sh got its
# learning rate (docs/training.md). A 64-px run leaves most of an H100 idle (kernel launches
# bound it), so four or five runs together cost each only 20-40% of its speed.
#
#   experiments/gpu_variants_stage1.sh INIT_CHECKPOINT RUN_ROOT TRAIN_SECONDS NAME:FLAG,FLAG,... [...]
#   e.g. ... checkpoints/phantom-cxr64 runs/v 450 "B:--grow-encoder,--e-channel-max,256,--batch,64" \
#            "C:--grow-encoder,--e-channel-max,256,--batch,64,--lr,0.005"
set -euo pipefail
init=${1:?init checkpoint}; root=${2:?run root}; seconds=${3:?training seconds}; shift 3
py=${PY:-python3}
start=$(date +%s)
[ -f data/phantom-cxr64/phantom.json ] || $py -m gmia phantom --preset phantom-cxr64 --out data/phantom-cxr64 >/dev/null
PY=$py experiments/pool_finetune_stage1.sh --pool-only
common="--preset phantom-cxr64 --data data/pool-cxr64 --init-from $init --lambda-gan 0 --lambda-ssim 1 --quiet"
names=""
for v in "$@"; do
  n=${v%%:*}; names="$names $n"; mkdir -p $root
  echo ${v#*:} | tr ',' ' ' > $root/$n.flags
  # a kimg no run reaches: SIGINT at the deadline stops it with a snapshot
  $py -m gmia train aegan $common $(cat $root/$n.flags) --out $root/$n --kimg 100000 > $root/$n.out 2>&1 &
  echo $! > $root/$n.pid
done
sleep $(( seconds - ($(date +%s) - start) > 0 ? seconds - ($(date +%s) - start) : 0 ))
for n in $names; do kill -INT "$(cat $root/$n.pid)" 2>/dev/null || echo "$n had stopped already: see $root/$n.out"; done
wait
for n in $names; do  # resumed with nothing left to train, a run exports its weights (kimg in the card: where it stopped)
  $py -m gmia train aegan $common $(cat $root/$n.flags) --out $root/$n --resume --kimg 0.001 >> $root/$n.out 2>&1 &
done
wait
for n in $names; do tail -1 $root/$n/log.txt; done
$py experiments/stage1_generalization.py --preset phantom-cxr64 --splits val,test --threads 8 \
  $(for n in $names; do echo $root/$n/checkpoint; done)
