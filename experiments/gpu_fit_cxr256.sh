#!/usr/bin/env bash
# `gmia fit --preset gmia-cxr256` end to end on one GPU for a fixed budget, then `gmia anonymize` with the result:
# prints each stage's seconds and the anonymization throughput. Sized to finish in about 5 minutes on an H100/H200.
#
#   experiments/gpu_fit_cxr256.sh [RUN_ROOT]                    (default runs/gpu-fit-cxr256; must not exist)
#   SHARDS=8 PATIENTS=25 KIMG=1.5 TICK_KIMG=0.5 ANON_LIMIT=32 MAX_STEPS=100 experiments/gpu_fit_cxr256.sh R
#                                                               (what fits 5 minutes of an H200, start-up included)
#
# What it runs:
# 1. 256-px chest phantoms: SHARDS shards of PATIENTS patients x 4 studies (one `gmia phantom` process per shard,
#    seeds 11..), written as a folder of your own: images in shard folders plus labels.csv (path, patient, the six
#    findings), so the fit takes the `--input DIR --labels CSV` path a hospital's folder takes;
# 2. gmia fit with the full gmia-cxr256 architectures (IResNet-50 E_id, DenseNet-121 E_ut, the published AE-GAN at
#    batch 128 with R1, path length and the MFM as its perceptual term) for a fixed budget: EPOCHS epochs per
#    scoring network, the decoupler in closed form (scatter), KIMG kimg of stage 1, the report encoder-only;
# 3. gmia anonymize of ANON_LIMIT images of the folder with the fitted checkpoints (--max-steps MAX_STEPS);
# 4. one line per stage (seconds, the stage's numbers) and the anonymization's images/s.
#
# Needs: python3 with torch (CUDA), and gmia importable (`pip install --no-deps -e .` or PYTHONPATH=.) with its
# dependencies (kornia: carry a wheel where there is no registry). Check the logic on a CPU first with
#   DEVICE=cpu SHARDS=2 PATIENTS=12 VARIANT=tiny KIMG=0.008 ANON_LIMIT=4 experiments/gpu_fit_cxr256.sh runs/fit-cpu
set -euo pipefail
root=${1:-runs/gpu-fit-cxr256}
shards=${SHARDS:-8}; patients=${PATIENTS:-40}; epochs=${EPOCHS:-1}; kimg=${KIMG:-6}
anon_limit=${ANON_LIMIT:-64}; max_steps=${MAX_STEPS:-200}; device=${DEVICE:-cuda}; py=${PY:-python3}
[ ! -e "$root" ] || { echo "$root exists; choose another RUN_ROOT" >&2; exit 2; }
mkdir -p "$root"
start=$(date +%s)
export PYTHONUNBUFFERED=1

# 1. phantoms, in parallel, one shard per seed
for s in $(seq 1 "$shards"); do
  OMP_NUM_THREADS=1 $py -m gmia phantom --domain cxr --patients "$patients" --studies 4 --size 256 \
    --seed $((10 + s)) --out "$root/shards/s$s" > /dev/null &
done
wait
$py - "$root" "$shards" <<'PY'
import csv, json, sys
from pathlib import Path
root, shards = Path(sys.argv[1]), int(sys.argv[2])
data = root / "data"
data.mkdir()
rows = []
for s in range(1, shards + 1):
    shard = root / "shards" / f"s{s}"
    findings = json.loads((shard / "phantom.json").read_text())["findings"]
    (shard / "images").rename(data / f"s{s}")
    for r in csv.DictReader(open(shard / "metadata.csv")):
        rows.append({"path": f"s{s}/" + r["image"].split("/", 1)[1], "patient": f"s{s}-{r['patient']}",
                     **{f: r[f] for f in findings}})
with open(data / "labels.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
print(f"phantoms: {len(rows)} images of {len({r['patient'] for r in rows})} patients -> {data}")
PY
rm -rf "$root/shards"
t_data=$(date +%s)

# 2. the fit, for a fixed budget
# the MFM's linear probes (run at each validation) on PROBE_IMAGES training images: an LDA over its 2048 features
# costs tens of seconds per validation at 1000 images
sets=(--set "mfm.epochs=$epochs" --set "identity.epochs=$epochs" --set "utility.epochs=$epochs"
      --set "attacker.epochs=$epochs" --set "mfm.probe_images=${PROBE_IMAGES:-256}" --set "decoupler.method=scatter"
      --set "decoupler.sweep=false" --set "aegan.kimg=$kimg" --set "aegan.tick_kimg=${TICK_KIMG:-1}"
      --set "report.limit=200")
$py -m gmia fit --preset gmia-cxr256 --input "$root/data" --labels "$root/data/labels.csv" \
  --out "$root/models" --device "$device" --quiet ${VARIANT:+--variant $VARIANT} "${sets[@]}" 2>&1 | tee "$root/fit.log"
t_fit=$(date +%s)

# 3. anonymize with the result
$py -m gmia anonymize --preset gmia-cxr256 --input "$root/data" --labels "$root/data/labels.csv" \
  --checkpoints "$root/models" --out "$root/anon" --limit "$anon_limit" --batch-size 32 --max-steps "$max_steps" \
  --device "$device" --quiet > "$root/anon.json"
t_anon=$(date +%s)

# 4. the numbers
$py - "$root" <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
fit = json.loads((root / "models" / "fit.json").read_text())
print(f"\nfit {fit['preset']}: {fit['data']['images']} images, {fit['data']['train_patients']} training patients, "
      f"{fit['environment']['device']}")
for r in fit["stages"]:
    numbers = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in (r.get("numbers") or {}).items() if v is not None)
    print(f"  {r['stage']:<10s} {r['status']:<8s} {r['seconds']:>7.1f} s  {numbers}")
stats = [json.loads(s) for s in (root / "models" / "work" / "aegan" / "stats.jsonl").read_text().splitlines()]
ticks = [s for s in stats if "sec_per_tick" in s]
last = ticks[-1]["sec_per_tick"] / (ticks[-1]["kimg"] - (ticks[-2]["kimg"] if len(ticks) > 1 else 0))
print(f"  stage 1: {stats[-1]['kimg']} kimg, {stats[-1]['sec_per_kimg']} s/kimg over the run, {last:.2f} s/kimg "
      f"in its last tick")
text = (root / "anon.json").read_text()
anon = json.loads(text[text.index("\n{") + 1:] if not text.startswith("{") else text)  # after the log line
call = anon["this_call"]
print(f"anonymize: {call['released']} released, {call['withheld']} withheld, {call['error']} errors in "
      f"{call['seconds']} s: {call['images_per_second']} images/s ({call['batch_steps']} batch steps)")
PY
echo "wall: data $((t_data - start)) s, fit $((t_fit - t_data)) s, anonymize $((t_anon - t_fit)) s," \
  "total $((t_anon - start)) s"
