"""Which Gaussians a set of cameras can see: the frustum test behind ``prune_unseen``.

A Gaussian whose centre lies in no training camera's view frustum gets no gradient from any
photo. Such Gaussians still render in novel views, and training makes them: moving a Gaussian
out of every training frustum is one way the optimiser removes its error from the loss, and
densification splits big background Gaussians into places no photo covers. On plush_dog
(a toy on a plain backdrop, cameras on one orbit) they collect between neighbouring training
cameras, right in front of the held-out cameras there (see ``benchmarks/NOTES.md``).
"""

from __future__ import annotations

import torch


def in_any_frustum(means: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                   sizes: torch.Tensor, near: float = 0.01, margin: float = 0.15,
                   chunk: int = 16) -> torch.Tensor:
    """Whether each centre projects into at least one camera's image.

    Args:
        means: ``[N, 3]`` Gaussian centres (world frame, scene units).
        viewmats: ``[C, 4, 4]`` world-to-camera matrices (OpenCV axes: +z forward).
        Ks: ``[C, 3, 3]`` pinhole intrinsics in pixels.
        sizes: ``[C, 2]`` image ``(width, height)`` in pixels.
        near: smallest camera-space depth counted as in front (scene units; gsplat's
            ``near_plane`` default).
        margin: the image rectangle is widened by this fraction of its size on every side, so
            that a Gaussian centred just outside the frame, whose footprint reaches into it,
            counts as seen.
        chunk: cameras tested at once (bounds the temporary ``[chunk, N, 3]`` tensor).

    Returns:
        ``[N]`` bool on ``means.device``.
    """
    seen = torch.zeros(means.shape[0], dtype=torch.bool, device=means.device)
    x = means.detach()
    for s in range(0, viewmats.shape[0], chunk):
        R = viewmats[s:s + chunk, :3, :3]
        t = viewmats[s:s + chunk, :3, 3]
        K = Ks[s:s + chunk]
        wh = sizes[s:s + chunk].to(x.dtype)
        pc = torch.einsum("cij,nj->cni", R, x) + t[:, None, :]          # [c, N, 3]
        z = pc[..., 2]
        zc = z.clamp_min(near)
        u = K[:, None, 0, 0] * pc[..., 0] / zc + K[:, None, 0, 2]
        v = K[:, None, 1, 1] * pc[..., 1] / zc + K[:, None, 1, 2]
        w, h = wh[:, None, 0], wh[:, None, 1]
        inside = ((z > near) & (u > -margin * w) & (u < (1 + margin) * w)
                  & (v > -margin * h) & (v < (1 + margin) * h))
        seen |= inside.any(dim=0)
    return seen


def camera_stack(scene, indices: list[int], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(viewmats [C, 4, 4], Ks [C, 3, 3], sizes [C, 2])`` float32 tensors of the views
    ``indices`` of ``scene`` on ``device``."""
    ims = [scene.images[i] for i in indices]
    viewmats = torch.stack([torch.as_tensor(im.viewmat, dtype=torch.float32) for im in ims])
    Ks = torch.stack([torch.as_tensor(im.K, dtype=torch.float32) for im in ims])
    sizes = torch.tensor([[im.width, im.height] for im in ims], dtype=torch.float32)
    return viewmats.to(device), Ks.to(device), sizes.to(device)
