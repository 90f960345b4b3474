#!/usr/bin/env bash
# The scarce-data ablation of issue 10: prostate-t2 from 3 volumes of one subject (the other
# subject's 3 volumes held out), trained (a) plainly, (b) with augmentation, (c) with augmentation
# and distillation from the la-mr teacher. Registrations are computed once and shared. Patches
# of 32: the aligned volumes are 35 voxels thick (19 slices of the template + the margin).
set -euo pipefail
DATA=${1:-../shared/data/prostate_mr}
OUT=${2:-out/prostate}
STEPS=${STEPS:-1000}
mkdir -p "$OUT"
common=(--modality MR --region prostate --holdout 3 --steps "$STEPS" --patch 32 --threads 1)
deepstd train "$DATA" --out "$OUT/plain.dstdb" --name prostate-t2 "${common[@]}"
for variant in augment teacher; do
  mkdir -p "$OUT/$variant.work" && cp "$OUT"/plain.work/*.npz "$OUT/$variant.work/"
done
deepstd train "$DATA" --out "$OUT/augment.dstdb" --name prostate-t2 --augment 4 "${common[@]}"
deepstd train "$DATA" --out "$OUT/teacher.dstdb" --name prostate-t2 --augment 4 --teacher la-mr "${common[@]}"
