#!/usr/bin/env bash
# Issue 22: the statue appearance comparison (none / embedding / bilateral) on the dataset's
# LLFF poses and on our own SfM's poses, one GPU, one process per row, rows interleaved so that
# a cut-off run still leaves pairs. Each row's JSON lands in $OUT/statue_<poses>/.
#
#   OUT=/tmp/x bash benchmarks/statue_poses_gpu.sh        # on the device, from the repo root
#
# Environment: DATA (folder with statue_llff/ and statue_ours/, PINHOLE copies at half size
# written by `benchmarks/real_captures.py pinhole --data-factor 2`; default .dev), WHEELS
# (wheels to install into a private folder first; default $DATA/whl), STEPS (default 7000),
# FIT_STEPS (NeRF-W appearance fit per held-out photo, default 100), BUDGET_S (no row starts
# after this many seconds, default 500).
set -u
OUT=${OUT:-/tmp/statue_poses}
D=${DATA:-.dev}
STEPS=${STEPS:-7000}
FIT=${FIT_STEPS:-100}
BUDGET=${BUDGET_S:-500}
PY=${PYTHON:-python3}
T0=$(date +%s)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
SITE=/tmp/statue_site
W=${WHEELS:-$D/whl}
if [ -d "$W" ]; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$W"/*.whl 2>&1 | tail -2
fi
export PYTHONPATH=$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
"$PY" - <<'PY' 2>&1 | tail -3
import torch, gsplat
print(torch.__version__, torch.cuda.get_device_name(0), "gsplat", gsplat.__version__)
from gsplat.cuda._backend import _C  # builds the CUDA extension on first use
print("gsplat extension:", _C)
PY
echo "setup done t=$(( $(date +%s) - T0 ))s"
for kind in none embedding bilateral; do
  for poses in ours llff; do
    now=$(( $(date +%s) - T0 ))
    if [ "$now" -ge "$BUDGET" ]; then echo "$poses $kind: skipped (t=${now}s)"; continue; fi
    o="$OUT/statue_$poses"
    "$PY" benchmarks/real_captures.py statue --data "$D/statue_$poses" --data-factor 1 \
      --steps "$STEPS" --fit-steps "$FIT" --appearance "$kind" --out "$o" \
      > "$o.$kind.log" 2>&1
    echo "$poses $kind rc=$? t=$(( $(date +%s) - T0 ))s $(grep -h '^{' "$o.$kind.log" | tail -1 \
      | cut -c1-600)"
  done
done
so=$(find ~/.cache/torch_extensions -name 'gsplat_cuda*.so' 2>/dev/null | head -1)
[ -n "$so" ] && cp "$so" "$OUT/gsplat_cuda.so" && echo "kept $so"
