#!/usr/bin/env bash
# Rebuild the shipped demo bundle (models/covid-ct-demo) from scratch, on the CPU:
#   1. train the lung U-Net, the 4-class slice classifier and the COVID-19 slice locator
#      on synthetic phantoms (training seeds 1000+ / 2000+),
#   2. evaluate the bundle with `dicomnode evaluate` on held-out phantoms (seeds 900000+,
#      never used in training, and a different matrix size),
#   3. write those figures, the data spec and the commands into the model card's `metrics`.
#
# Every number here is deliberate: sizes are chosen so the whole run fits in ~40 minutes of
# a 2-core CPU. Environment overrides: OUT (bundle folder), REPORT (evaluation folder),
# THREADS (torch threads per training, default 1: fastest on a shared machine),
# PARALLEL=1 (train the U-Net and the classifier at the same time), DN (the dicomnode
# executable), EVAL_COUNT (held-out cases, default 60), BOOTSTRAP (default 1000).
# DRY_RUN=1 runs every step on a handful of small phantoms for one epoch into /tmp (a
# check of the script itself, a few minutes; its figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

DN=${DN:-.venv/bin/dicomnode}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-models/covid-ct-demo}
REPORT=${REPORT:-/tmp/covid-ct-demo-evaluation}
THREADS=${THREADS:-1}
PARALLEL=${PARALLEL:-0}
EVAL_COUNT=${EVAL_COUNT:-60}
BOOTSTRAP=${BOOTSTRAP:-1000}

# Training data: 160 phantoms of all four classes (patient-level 80/20 train/validation
# split inside each run); the locator trains on COVID-19 phantoms only, from other seeds.
TRAIN_DATA="phantom:count=160,seed=1000,mix=1:1:1:1,slices=48,size=192"
LOCATOR_DATA="phantom:count=60,seed=2000,mix=0:0:0:1,slices=48,size=192"
# Held-out evaluation data: other seeds, another matrix size.
EVAL_DATA="phantom:count=${EVAL_COUNT},seed=900000,mix=1:1:1:1,slices=48,size=224"

EPOCHS_SEG=4 EPOCHS_CLS=8 EPOCHS_LOC=8
if [ "${DRY_RUN:-0}" = 1 ]; then
  OUT=${OUT_DRY:-/tmp/covid-ct-demo-dry-run} REPORT=${REPORT_DRY:-/tmp/covid-ct-demo-dry-run-evaluation}
  TRAIN_DATA="phantom:count=10,seed=1000,slices=20,size=96"
  LOCATOR_DATA="phantom:count=6,seed=2000,mix=0:0:0:1,slices=20,size=96"
  EVAL_DATA="phantom:count=8,seed=900000,slices=20,size=112"
  EPOCHS_SEG=1 EPOCHS_CLS=1 EPOCHS_LOC=1 BOOTSTRAP=20
  rm -rf "$OUT"
fi

COMMON=(--device cpu --seed 0 --threads "$THREADS" --val-fraction 0.2 --no-progress
        --name covid-ct-demo --bundle-version 0.1.0)

seg() {
  "$DN" train segmentation --data "$TRAIN_DATA" --out "$OUT" --features 8,16,32,64,64,8 --input-size 128 \
    --epochs $EPOCHS_SEG --batch-size 16 --lr 3e-3 --max-slices-per-case 8 "${COMMON[@]}"
}
cls() {
  "$DN" train classifier --data "$TRAIN_DATA" --out "$OUT" --block basic --layers 1,1,1,1 \
    --widths 16,32,64,128 --input-size 224 --epochs $EPOCHS_CLS --batch-size 32 --lr 1e-3 --max-slices-per-case 16 \
    "${COMMON[@]}"
}
loc() {
  "$DN" train locator --data "$LOCATOR_DATA" --out "$OUT" --block basic --layers 1,1,1,1 \
    --widths 16,32,64,128 --input-size 224 --epochs $EPOCHS_LOC --batch-size 32 --lr 1e-3 "${COMMON[@]}"
}

echo "== training into $OUT ($(date -u +%FT%TZ))"
if [ "$PARALLEL" = 1 ]; then
  seg & seg_pid=$!
  cls
  wait "$seg_pid"
else
  seg
  cls
fi
loc

EVAL_CMD=("$DN" evaluate --bundle "$OUT" --data "$EVAL_DATA" --out "$REPORT" --bootstrap "$BOOTSTRAP" --seed 0
          --device cpu --no-progress)
echo "== evaluating on held-out phantoms ($(date -u +%FT%TZ))"
rm -rf "$REPORT"
"${EVAL_CMD[@]}"

echo "== writing the evaluation figures into the model card"
EVAL_CMD_TEXT="$(printf '%q ' "${EVAL_CMD[@]}")" "$PY" - "$OUT" "$REPORT/metrics.json" <<'PYEOF'
import json, os, sys
from pipeline.training.bundle import record_metrics

bundle, metrics_path = sys.argv[1], sys.argv[2]
m = json.load(open(metrics_path))
card = json.load(open(os.path.join(bundle, "model_card.json")))
keep = ("n_cases", "class_counts", "decision_threshold", "per_class_auc", "multiway_auc", "accuracy",
        "per_class_sensitivity", "per_class_specificity", "confusion_matrix", "tasks", "lung_dice", "locating")
record = {
    "measured_by": "dicomnode evaluate",
    "command": os.environ["EVAL_CMD_TEXT"].strip(),
    "data_spec": m["data_spec"],
    "data": m["data"],
    "held_out": "evaluation seeds (900000+) never used in training (1000+, 2000+)",
    "evaluated_card_sha256": m["bundle_sha256"],
    "weights_sha256": {r: e["sha256"] for r, e in card["models"].items()},
    "chain_params": m.get("chain_params"),
    "bootstrap": {k: m["bootstrap"][k] for k in ("n_resamples", "seed", "confidence", "method")},
    **{k: m[k] for k in keep if k in m},
}
print(record_metrics(bundle, record))
print(json.dumps({"macro_auc": m["multiway_auc"]["macro"]["value"], "micro_auc": m["multiway_auc"]["micro"]["value"],
                  "lung_dice": m.get("lung_dice"), "locating_auc": (m.get("locating") or {}).get("auc")}, indent=1))
PYEOF
echo "== done ($(date -u +%FT%TZ)); weights:"
du -ch "$OUT"/*.pt
