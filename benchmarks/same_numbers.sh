#!/bin/bash
# Does a change keep the numbers? The same short trainings (BraTS SegResNet, 2 epochs on 3 generated cases of one
# site; metastasis ResNet18, 2 epochs on 64-pixel patches of 3 generated slides) with the code of revision REV and
# with the working tree, on data generated once, and their metrics.csv compared to the last digit (timings left out).
# Usage: benchmarks/same_numbers.sh REV [WORK]   (WORK default /tmp/same_numbers; about 5 minutes on 2 cores)
set -euo pipefail
REV=${1:?usage: benchmarks/same_numbers.sh REV [WORK]}
W=${2:-/tmp/same_numbers}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=$REPO/.venv/bin/python
rm -rf "$W"; mkdir -p "$W"
git -C "$REPO" worktree add -f "$W/old" "$REV" -q
trap 'git -C "$REPO" worktree remove -f "$W/old"' EXIT
cd "$REPO"
$PY -m brats_fl.cli make-data --out "$W/brats" --hgg 3 --lgg 3 --shape 48 48 32 --seed 0
$PY -m brats_fl.cli datalist "$W/brats"
$PY -m metastasis.cli make-data --out "$W/cam" --tumor 2 --normal 1 --width 4096 --height 3072 --seed 0
$PY -m metastasis.cli patches --data-root "$W/cam" --out "$W/cam/patches.json" --tumor-per-slide 30 --patch-size 64
for code in old new; do
  if [ $code = old ]; then P=$W/old/custom; else P=$REPO/custom; fi
  PYTHONPATH=$P $PY -m brats_fl.cli train --datalist "$W"/brats/datalists/*client_a.json --data-root "$W/brats" \
    --out "$W/brats_$code" --epochs 2 --set crop=[48,48,32] --set num_workers=0 --set num_threads=2
  PYTHONPATH=$P $PY -m metastasis.cli train --patches "$W/cam/patches.json" --out "$W/cam_$code" --epochs 2 \
    --set patch_size=64 --set num_workers=0 --set num_threads=2 --set batch_size=16
done
status=0
for t in brats cam; do
  cut -d, -f1-6 "$W/${t}_old/metrics.csv" > "$W/${t}_old.csv"
  cut -d, -f1-6 "$W/${t}_new/metrics.csv" > "$W/${t}_new.csv"
  echo "== $t (working tree)"; cat "$W/${t}_new.csv"
  if diff "$W/${t}_old.csv" "$W/${t}_new.csv"; then echo "same as $REV: $t"; else echo "DIFFERENT from $REV: $t"; status=1; fi
done
exit $status
