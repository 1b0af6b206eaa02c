#!/usr/bin/env bash
# One device call: trains packed pose sets (benchmarks/poses_psnr.py --pack --no-tracks DIR) for held-out PSNR.
# Carry .whl (splatforge deps as cp312 wheels), .whl2 (gsplat 1.5.3 wheel) and .packs; optionally .so/gsplat_cuda.so
# (otherwise gsplat is built, ~60 s, and the .so is copied to $OUT for the next call). Twelfth round of issue 22:
#   DF="fox=4 statue=2" JOBS=6 SEEDS=2 TAG=fox bash benchmarks/poses_psnr_gpu.sh fox_before=.packs/fox_before fox_after=.packs/fox_after
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whl2/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
nvidia-smi --query-gpu=name --format=csv,noheader
if [ -f .so/gsplat_cuda.so ]; then export SPLATFORGE_GSPLAT_SO=$PWD/.so/gsplat_cuda.so
else
  t0=$(date +%s); python3 -c "import torch, splatforge; from gsplat.cuda._backend import _C" || exit 1
  echo "gsplat compiled in $(( $(date +%s) - t0 )) s"
  so=$(ls /root/.cache/torch_extensions/*/gsplat_cuda/gsplat_cuda.so | head -1); cp $so $OUT/; export SPLATFORGE_GSPLAT_SO=$so
fi
printf "%s\n" "$@"  # the pose sets this call trains
python3 benchmarks/poses_psnr.py --ws "$@" --data-factor $DF --steps ${STEPS:-7000} --seeds ${SEEDS:-3} --jobs ${JOBS:-9} --out /tmp/pp --json $OUT/psnr_${TAG:-x}.json 2>&1 | tee $OUT/psnr_${TAG:-x}.log | grep -v "^{"
