#!/usr/bin/env bash
# Issue 16 on one GPU: the starting commit's default against the new levers, 7k steps, one
# process per row, each row's JSON (device, versions, commit, code path) in $OUT/issue16/.
#
#   OUT=/tmp/x bash benchmarks/issue16_gpu.sh            # on the device, from the repo root
#
# Environment: DATA (scenes, default .gpu/data), BASE_SRC (the starting commit's src/,
# default .gpu/base/src), BASE_COMMIT, STEPS (default 7000), BUDGET_S (no row starts after
# this many seconds, default 520), ROW_TIMEOUT (seconds per row, default 170), ROWS (space-
# separated row names to run, default all, in the order below: most informative first),
# SITE (extra folder on PYTHONPATH after the row's src/, e.g. carried wheels' /tmp/site).
set -u
OUT=${OUT:-/tmp/issue16_out}
D=${DATA:-.gpu/data}
BASE=${BASE_SRC:-.gpu/base/src}
BASE_COMMIT=${BASE_COMMIT:-8f81dd0}
NEW_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
STEPS=${STEPS:-7000}
BUDGET=${BUDGET_S:-520}
RT=${ROW_TIMEOUT:-170}
PY=${PYTHON:-python}
R="$OUT/issue16"
mkdir -p "$R"
T0=$(date +%s)
P="$D/plush_dog"; S="$D/statue_of_liberty"; B="$D/beer_phone"
CAP="cap_max=1000000"
LEVERS="selective_adam=true,res_schedule=true"

row() {  # name src commit scene [train_gpu.py args...]
  local name=$1 src=$2 commit=$3 scene=$4; shift 4
  if [ -n "${ROWS:-}" ] && [[ " $ROWS " != *" $name "* ]]; then return; fi
  local now=$(( $(date +%s) - T0 ))
  if [ "$now" -ge "$BUDGET" ]; then echo "$name: skipped (t=${now}s)"; return; fi
  GIT_COMMIT=$commit PYTHONPATH=$src${SITE:+:$SITE} timeout "$RT" "$PY" benchmarks/train_gpu.py \
    --scene "$scene" --steps "$STEPS" --name "$name" --json "$R/$name.json" "$@" \
    > "$R/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc t=$(( $(date +%s) - T0 ))s $(grep -h '^{' "$R/$name.log" | tail -1 \
    | cut -c1-400)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$R/device.txt" 2>&1
row plush_base           "$BASE"   "$BASE_COMMIT" "$P"
row plush_selective      src "$NEW_COMMIT" "$P" --set selective_adam=true
row plush_res_schedule   src "$NEW_COMMIT" "$P" --set res_schedule=true
row statue_base          "$BASE"   "$BASE_COMMIT" "$S" --set "$CAP"
row statue_levers        src "$NEW_COMMIT" "$S" --set "$CAP,$LEVERS"
row beer_base            "$BASE"   "$BASE_COMMIT" "$B" --set "$CAP"
row beer_levers          src "$NEW_COMMIT" "$B" --set "$CAP,$LEVERS"
row plush_prune30        src "$NEW_COMMIT" "$P" --set prune_significance=0.3
row plush_bf16_moments   src "$NEW_COMMIT" "$P" --set adam_moments_dtype=bfloat16
row plush_triton_loss    src "$NEW_COMMIT" "$P" --set triton_loss=true
row statue_bf16_moments  src "$NEW_COMMIT" "$S" --set "$CAP,adam_moments_dtype=bfloat16"
row plush_all            src "$NEW_COMMIT" "$P" --set "$LEVERS,prune_significance=0.3"
row plush_default_new    src "$NEW_COMMIT" "$P"
echo "done in $(( $(date +%s) - T0 ))s; rows in $R"
