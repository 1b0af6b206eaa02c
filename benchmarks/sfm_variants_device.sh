#!/usr/bin/env bash
# One device call, on its 16 CPU cores (no GPU used): SfM of one image folder with the baseline's
# code and with today's (guided-only two-view points kept), the points variants of today's run
# (benchmarks/guided_points_variants.py), and packs of all of them for benchmarks/poses_psnr_gpu.sh,
# as one tar per pose set under $OUT. Issue 22, fourteenth round (fox, whose 2-core SfM takes 20+
# minutes here):
#   CASE=fox DF=4 RATIOS="1.1" bash benchmarks/sfm_variants_device.sh .data/fox/images
# Carry .whl (splatforge's pure-Python deps as cp312 wheels), .whl3/pycolmap.tar.xz (pycolmap
# 4.2.1's wheel unpacked and xz-compressed: the wheel is 37 MB), .old/src (the baseline's code)
# and the image folder; with .whl2 (gsplat's wheel) it also builds gsplat_cuda.so into $OUT.
set -o pipefail
images=$1
mkdir -p /tmp/site && tar xJf .whl3/pycolmap.tar.xz -C /tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl $(ls .whl2/*.whl 2>/dev/null) || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# PyAV's wheel (36 MB) does not fit beside the rest; splatforge.ingest imports it, but SfM of an
# image folder never decodes video: a placeholder that refuses to open anything stands in.
if ! python3 -c "import av" 2>/dev/null; then
  mkdir -p /tmp/site/av/video && touch /tmp/site/av/video/__init__.py
  printf 'class FFmpegError(Exception):\n    pass\n\n\ndef open(*a, **k):\n    raise RuntimeError("PyAV is not installed here")\n' > /tmp/site/av/__init__.py
  echo 'class VideoReformatter: pass' > /tmp/site/av/video/reformatter.py
fi
nproc; python3 -c "import pycolmap; print('pycolmap', pycolmap.__version__)"
w=/tmp/w; mkdir -p $w
t0=$(date +%s)
if [ -d .whl2 ]; then  # gsplat's CUDA code, built beside the SfM for the training call (carry .so)
  (PYTHONPATH=src:/tmp/site MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 -c "import torch, splatforge; from gsplat.cuda._backend import _C" > $w/gsplat.log 2>&1
   cp $(ls /root/.cache/torch_extensions/*/gsplat_cuda/gsplat_cuda.so | head -1) $OUT/ && echo "gsplat built $(( $(date +%s) - t0 )) s") &
fi
(PYTHONPATH=.old/src:/tmp/site python3 -m splatforge sfm $images -o $w/${CASE}_before > $OUT/before.log 2>&1; echo "before done $(( $(date +%s) - t0 )) s") &
(PYTHONPATH=src:/tmp/site python3 -m splatforge sfm $images -o $w/${CASE}_keep --no-drop-guided-two-view-points > $OUT/keep.log 2>&1; echo "keep done $(( $(date +%s) - t0 )) s") &
wait
tail -4 $OUT/before.log $OUT/keep.log
export PYTHONPATH=src:/tmp/site
python3 benchmarks/guided_points_variants.py $w/${CASE}_keep --case $CASE --ratio $RATIOS --out $w || exit 1
sets="${CASE}_before=$w/${CASE}_before ${CASE}_keep=$w/${CASE}_keep ${CASE}_drop=$w/${CASE}_drop"
for r in $RATIOS; do l=${r/./p}; sets="$sets ${CASE}_$l=$w/${CASE}_$l"; done
python3 benchmarks/poses_psnr.py --pack /tmp/packs --no-tracks --data-factor $CASE=$DF --ws $sets || exit 1
for d in /tmp/packs/*; do tar cf $OUT/$(basename $d).tar -C /tmp/packs $(basename $d); done
for s in before keep; do cp $w/${CASE}_$s/sfm.json $w/sfm_${CASE}_$s.json; done
tar cf $OUT/sfm_json.tar -C $w sfm_${CASE}_before.json sfm_${CASE}_keep.json
ls -la $OUT
