#!/usr/bin/env bash
# Rebuild the shipped demo bundle (models/covid-ct-demo) from scratch, on the CPU:
#   1. train the lung U-Net, the 4-class slice classifier and the COVID-19 slice locator
#      on synthetic phantoms (training cohort seeds 1000-2300),
#   2. evaluate the bundle with `dicomnode evaluate` on held-out phantoms (seeds 900000+,
#      never used in training, and a different matrix size),
#   3. write those figures, the data spec and the commands into the model card's `metrics`.
#
# Every number here is deliberate: sizes are chosen so the whole run fits in ~40 minutes of
# a 2-core CPU. Environment overrides: OUT (bundle folder), REPORT (evaluation folder),
# THREADS (torch threads per training, default 1: fastest on a shared machine),
# PARALLEL=1 (train the classifier and the locator at the same time), STAGES (a subset of
# "seg cls loc eval", default all; e.g. STAGES=eval re-measures a trained bundle), DN (the dicomnode
# executable), EVAL_COUNT (held-out cases, default 48), BOOTSTRAP (default 1000).
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
STAGES=${STAGES:-seg cls loc eval}
EVAL_COUNT=${EVAL_COUNT:-48}
BOOTSTRAP=${BOOTSTRAP:-1000}

# Training data. The U-Net: 160 phantoms of all four classes at 192 px. The classifier:
# three cohorts at 160, 192 and 256 px (the slice classifier otherwise learns one matrix
# size's texture and fails on others); the locator: COVID-19 phantoms only, same three
# sizes. Each run splits its cases 80/20 into training and validation by patient.
SEG_DATA=(--data "phantom:count=160,seed=1000,mix=1:1:1:1,slices=48,size=192")
CLS_DATA=(--data "phantom:count=56,seed=1100,mix=1:1:1:1,slices=48,size=160"
          --data "phantom:count=56,seed=1200,mix=1:1:1:1,slices=48,size=192"
          --data "phantom:count=56,seed=1300,mix=1:1:1:1,slices=48,size=256")
LOC_DATA=(--data "phantom:count=20,seed=2100,mix=0:0:0:1,slices=48,size=160"
          --data "phantom:count=20,seed=2200,mix=0:0:0:1,slices=48,size=192"
          --data "phantom:count=20,seed=2300,mix=0:0:0:1,slices=48,size=256")
# Held-out evaluation data: other seeds, another matrix size.
EVAL_DATA="phantom:count=${EVAL_COUNT},seed=900000,mix=1:1:1:1,slices=48,size=224"

EPOCHS_SEG=4 EPOCHS_CLS=16 EPOCHS_LOC=6
if [ "${DRY_RUN:-0}" = 1 ]; then
  OUT=${OUT_DRY:-/tmp/covid-ct-demo-dry-run} REPORT=${REPORT_DRY:-/tmp/covid-ct-demo-dry-run-evaluation}
  SEG_DATA=(--data "phantom:count=10,seed=1000,slices=20,size=96")
  CLS_DATA=(--data "phantom:count=6,seed=1100,slices=20,size=80" --data "phantom:count=6,seed=1200,slices=20,size=96")
  LOC_DATA=(--data "phantom:count=6,seed=2100,mix=0:0:0:1,slices=20,size=96")
  EVAL_DATA="phantom:count=8,seed=900000,slices=20,size=112"
  EPOCHS_SEG=1 EPOCHS_CLS=1 EPOCHS_LOC=1 BOOTSTRAP=20
  rm -rf "$OUT"
fi

COMMON=(--device cpu --seed 0 --threads "$THREADS" --val-fraction 0.2 --no-progress
        --name covid-ct-demo --bundle-version 0.1.0)

seg() {
  "$DN" train segmentation "${SEG_DATA[@]}" --out "$OUT" --features 8,16,32,64,64,8 --input-size 128 \
    --epochs $EPOCHS_SEG --batch-size 16 --lr 3e-3 --max-slices-per-case 8 "${COMMON[@]}"
}
cls() {
  "$DN" train classifier "${CLS_DATA[@]}" --out "$OUT" --block basic --layers 1,1,1,1 \
    --widths 16,32,64,128 --input-size 224 --epochs $EPOCHS_CLS --batch-size 32 --lr 2e-3 --max-slices-per-case 16 \
    "${COMMON[@]}"
}
loc() {
  "$DN" train locator "${LOC_DATA[@]}" --out "$OUT" --block basic --layers 1,1,1,1 \
    --widths 16,32,64,128 --input-size 224 --epochs $EPOCHS_LOC --batch-size 32 --lr 1e-3 --max-slices-per-case 16 \
    "${COMMON[@]}"
}

want() { [[ " $STAGES " == *" $1 "* ]]; }

echo "== training into $OUT ($(date -u +%FT%TZ)); stages: $STAGES"
# The classifier and the locator are trained on inputs cut with the lung masks the chain
# will compute (--lung-masks chain: the U-Net trained first), so the U-Net comes first.
want seg && seg
pids=()
for stage in loc cls; do
  want "$stage" || continue
  if [ "$PARALLEL" = 1 ]; then
    # Independent of each other (each updates the card under a lock).
    "$stage" & pids+=($!)
  else
    "$stage"
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
want eval || exit 0

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
    "held_out": "evaluation cohort seed 900000 and matrix size 224 px, never used in training "
                "(cohort seeds 1000-2300 at 160, 192 and 256 px)",
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
