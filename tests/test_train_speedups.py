"""The trainer's speed-ups and floater pruning, checked against their slow references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import splatforge  # noqa: F401  (import-order guard)
from splatforge.metrics import ssim
from splatforge.train.fused_ssim import ssim_mean
from splatforge.train.visibility import (
    camera_centres,
    camera_clearance,
    camera_stack,
    in_any_frustum,
    near_cameras,
)


@pytest.mark.parametrize("shape", [(21, 34, 3), (2, 17, 23, 3)])
def test_fused_ssim_matches_autograd_value_and_gradient(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(shape, generator=g, dtype=torch.float64)
    fused = ssim_mean(x, y)
    (g_fused,) = torch.autograd.grad(fused, x)
    # the reference computes in float32 (metrics.ssim casts), so compare at that precision
    ref = ssim(x, y, padding="same")
    (g_ref,) = torch.autograd.grad(ref, x)
    assert abs(fused.item() - ref.item()) < 1e-6
    assert float((g_fused - g_ref).abs().max() / g_ref.abs().max()) < 1e-5
    # and the hand-derived backward is exact in float64
    assert torch.autograd.gradcheck(lambda t: ssim_mean(t, y), (x,))


def test_fused_ssim_of_identical_images_is_one_and_rejects_shape_mismatch():
    x = torch.rand(16, 16, 3)
    assert float(ssim_mean(x, x)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        ssim_mean(x, torch.rand(16, 15, 3))


def _look_at_camera(centre, target, f=100.0, w=200, h=100):
    """World-to-camera [4, 4] (OpenCV axes) of a camera at ``centre`` looking at ``target``."""
    c, t = np.asarray(centre, float), np.asarray(target, float)
    z = t - c
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    vm = np.eye(4)
    vm[:3, :3] = R
    vm[:3, 3] = -R @ c
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    return (torch.tensor(vm, dtype=torch.float32)[None], torch.tensor(K, dtype=torch.float32)[None],
            torch.tensor([[w, h]], dtype=torch.float32))


def test_frustum_and_clearance_tests():
    vm, K, wh = _look_at_camera([0, -4, 0], [0, 0, 0])
    pts = torch.tensor([[0.0, 0.0, 0.0],      # straight ahead: seen
                        [0.0, -5.0, 0.0],     # behind the camera: unseen
                        [30.0, 0.0, 0.0],     # far outside the image: unseen
                        [4.4, 0.0, 0.0],      # just outside the right edge, inside the margin
                        [0.0, -3.8, 0.0]])    # in front of the lens, 0.2 from the centre
    seen = in_any_frustum(pts, vm, K, wh, margin=0.15)
    assert seen.tolist() == [True, False, False, True, True]
    assert in_any_frustum(pts, vm, K, wh, margin=0.0).tolist() == [True, False, False, False,
                                                                   True]
    assert torch.allclose(camera_centres(vm), torch.tensor([[0.0, -4.0, 0.0]]), atol=1e-5)
    radii = camera_clearance(pts[:1], vm, K, wh, 0.3)         # median depth 4 -> radius 1.2
    assert radii.tolist() == pytest.approx([1.2], abs=1e-5)
    assert near_cameras(pts, camera_centres(vm), radii).tolist() == [False, True, False,
                                                                     False, True]
    assert camera_clearance(pts[:1], vm, K, wh, 0.0).tolist() == [0.0]


def test_prune_unseen_removes_a_planted_floater(trained_plush):
    """A Gaussian placed where no training photo looks is removed at the next refinement."""
    from splatforge.train.strategies import make_strategy

    scene = trained_plush.scene
    cfg = trained_plush.config
    stack = camera_stack(scene, scene.train_indices, torch.device("cpu"))
    strat, state = make_strategy(cfg, float(scene.extent()),
                                 seen_fn=lambda m: in_any_frustum(m, *stack))
    n = 5
    centre = torch.as_tensor(np.asarray(scene.points, dtype=np.float32)).mean(0)
    # a point just behind a training camera, where no training photo looks
    behind = camera_centres(stack[0]) - 0.05 * stack[0][:, 2, :3]
    behind = behind[~in_any_frustum(behind, *stack)]
    assert len(behind), "every point behind a camera is seen by another: pick another plant"
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.cat([centre.repeat(n - 1, 1), behind[:1]])),
        "scales": torch.nn.Parameter(torch.zeros(n, 3)),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.full((n,), 2.0)),
        "sh0": torch.nn.Parameter(torch.zeros(n, 1, 3)),
        "shN": torch.nn.Parameter(torch.zeros(n, 3, 3))})
    assert in_any_frustum(params["means"], *stack).tolist() == [True] * 4 + [False]
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    state["grad2d"] = torch.zeros(n)
    state["count"] = torch.zeros(n)
    step = strat.refine_every * 2
    strat.refine_stop_iter = 0      # no growth/prune of gsplat's own in this check
    strat.post_backward(params, optimizers, state, step,
                        {"width": 10, "height": 10, "n_cameras": 1}, lr=0.0)
    assert len(params["means"]) == n - 1
    assert strat.counts["pruned_unseen"] == 1


@pytest.mark.gpu
def test_fused_ssim_on_cuda_matches_the_reference():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(500, 750, 3, device="cuda", generator=g, requires_grad=True)
    y = torch.rand(500, 750, 3, device="cuda", generator=g)
    (g_fused,) = torch.autograd.grad(ssim_mean(x, y), x)
    (g_ref,) = torch.autograd.grad(ssim(x, y, padding="same"), x)
    assert abs(ssim_mean(x, y).item() - ssim(x, y, padding="same").item()) < 1e-5
    assert float((g_fused - g_ref).abs().max() / g_ref.abs().max()) < 1e-3


def test_graphed_loss_beyond_its_shape_budget_runs_the_eager_loss():
    """GraphedPhotometricLoss graphs at most max_graphs shapes; with none allowed it is the
    eager loss (same values and gradient), which also lets this path run without CUDA."""
    from splatforge.train.losses import GraphedPhotometricLoss, photometric_loss

    g = torch.Generator().manual_seed(3)
    x = torch.rand(20, 30, 3, generator=g, requires_grad=True)
    y = torch.rand(20, 30, 3, generator=g)
    fn = GraphedPhotometricLoss(0.2, max_graphs=0)
    loss, l1, s = fn(x, y)
    (gx,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_(True)
    ref, ref_l1, ref_s = photometric_loss(x2, y, 0.2, fused_ssim=True)
    (gref,) = torch.autograd.grad(ref, x2)
    assert torch.equal(loss.detach(), ref.detach()) and torch.equal(gx, gref)
    assert torch.equal(l1.detach(), ref_l1.detach()) and torch.equal(s.detach(), ref_s.detach())
    assert fn._graphs == {}
