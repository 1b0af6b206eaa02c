"""The Triton photometric loss (splatforge.train.triton_loss) against the PyTorch loss.

On this CPU-only machine the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``,
set before Triton is imported, hence the subprocess); the same comparison on CUDA is in
``tests/test_train_gpu.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from splatforge.train.triton_loss import fused_photometric_loss, triton_loss_available

_SCRIPT = r"""
import json, torch
from splatforge.train.losses import photometric_loss
from splatforge.train.triton_loss import fused_photometric_loss, triton_loss_available
assert triton_loss_available(torch.device("cpu"))
g = torch.Generator().manual_seed(0)
rows = []
for shape, lam in (((13, 17, 3), 0.2), ((2, 9, 12, 3), 0.2), ((24, 19, 3), 0.5),
                   ((12, 30, 3), 1.0)):
    x = torch.rand(shape, generator=g, requires_grad=True)
    y8 = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    y = y8.float() / 255
    ref = photometric_loss(x, y, lam, fused_ssim=False)      # autograd through metrics.ssim
    (g_ref,) = torch.autograd.grad(ref[0], x)
    for target in (y8, y):
        out = fused_photometric_loss(x, target, lam)
        (g_out,) = torch.autograd.grad(3.0 * out[0], x)       # upstream gradient 3
        rows.append({"shape": list(shape), "dtype": str(target.dtype),
                     "value_err": max(abs(float(a) - float(b)) for a, b in zip(out, ref)),
                     "grad_err": float((g_out - 3.0 * g_ref).abs().max()),
                     "grad_max": float(g_ref.abs().max()),
                     "l1_grad_only": bool(out[1].requires_grad or out[2].requires_grad)})
# identical images: SSIM 1, L1 0, loss 0
z = torch.rand(10, 14, 3, generator=g)
same = fused_photometric_loss(z, z.clone(), 0.2)
rows.append({"same": [float(v) for v in same]})
print(json.dumps(rows))
"""


@pytest.fixture(scope="module")
def interpreted():
    # triton is a test dependency (pyproject [test]); CUDA builds of torch ship it
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_values_and_gradients_match_the_pytorch_loss(interpreted):
    rows = [r for r in interpreted if "shape" in r]
    assert len(rows) == 8
    for r in rows:
        assert r["value_err"] < 2e-6, r
        # float32 sums in another order: ~1e-9 absolute against gradients of ~1e-3
        assert r["grad_err"] < 1e-5 * r["grad_max"] + 1e-9, r
        assert not r["l1_grad_only"], r


def test_identical_images_give_zero_loss(interpreted):
    loss, l1, s = interpreted[-1]["same"]
    assert abs(loss) < 1e-6 and l1 == 0.0 and abs(s - 1.0) < 1e-6


def test_bad_inputs_are_refused():
    x = torch.rand(8, 9, 3)
    with pytest.raises(ValueError, match="must be equal"):
        fused_photometric_loss(x, torch.rand(8, 10, 3))
    with pytest.raises(ValueError, match="must be equal"):
        fused_photometric_loss(x[..., 0], x[..., 0].clone())
    with pytest.raises(ValueError, match="float32"):
        fused_photometric_loss(x.double(), x.double())
    if not triton_loss_available(x.device):  # this process has no interpreter
        with pytest.raises(ValueError, match="cannot run on cpu"):
            fused_photometric_loss(x, x.clone())


_TRAIN_SCRIPT = r"""
import json, sys
from pathlib import Path
from splatforge.config import SceneConfig, TrainConfig
from splatforge.train.trainer import Trainer
scene, cache, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
rows = {}
for on in (True, False):
    cfg = TrainConfig(max_steps=6, save_steps=[6], log_every=1, eval_every=0, device="cpu",
                      seed=3, sh_degree=0, triton_loss=on)
    tr = Trainer(cfg, scene, out / str(on), scene_config=SceneConfig(data_factor=8,
                                                                    cache_dir=cache))
    res = tr.run()
    log = [json.loads(x) for x in res.log_path.read_text().splitlines() if x.strip()]
    rows[str(on)] = {"used": tr.triton_loss,
                     "loss": [r["loss"] for r in log if r.get("kind") != "eval"],
                     "psnr": [r["psnr"] for r in log if r.get("kind") != "eval"]}
print(json.dumps(rows))
"""


def test_trainer_with_the_triton_loss_follows_the_pytorch_loss(tmp_path, plush_scene_config):
    """Six training steps with ``triton_loss=True`` (interpreted kernels, uint8 target) log
    the same losses and training PSNRs as the PyTorch loss, step for step: steps 2-6 render
    parameters updated with the kernels' gradient, so a wrong gradient would show."""
    from conftest import PLUSH_DOG

    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, str(PLUSH_DOG),
                          str(plush_scene_config.cache_dir), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    on, off = rows["True"], rows["False"]
    assert on["used"] is True and off["used"] is False
    assert len(on["loss"]) == len(off["loss"]) == 6
    for a, b in zip(on["loss"] + on["psnr"], off["loss"] + off["psnr"]):
        assert a == pytest.approx(b, rel=1e-4), (on, off)
