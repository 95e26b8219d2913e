#!/usr/bin/env bash
# Table 4 of GKNet under one equal budget (configs/table4_*.json), two runs at a time on one
# thread each; safe to rerun: a finished run is skipped, an interrupted one resumes.
#   bash tools/run_table4.sh [name ...]     # default: every configs/table4_*.json
# Runs go to runs/table4/<name> (ignored by git); score them with docs/models/gknet.md's commands.
set -u
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(baseline kpb_lre_scf kpb kpb_lre kpb_lre_scf_free kpb_lre_scf_free_wd hdnet)
fi
export OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=8589934592 MALLOC_TOP_PAD_=536870912
one() {
  local out=runs/table4/$1
  if [ -f "$out/final/model.safetensors" ]; then echo "$1: done"; return; fi
  local resume=(); [ -f "$out/last.pt" ] && resume=(--resume)
  mkdir -p "$out"
  python -m harmonize train --config "configs/table4_$1.json" --out "$out" "${resume[@]}" --no-progress >>"$out/stdout.log" 2>&1
  echo "$1: exit $?"
}
lane() { for n in "$@"; do one "$n"; done; }
odd=(); even=()
for i in "${!names[@]}"; do if (( i % 2 )); then odd+=("${names[$i]}"); else even+=("${names[$i]}"); fi; done
lane "${even[@]}" & lane "${odd[@]}" & wait
