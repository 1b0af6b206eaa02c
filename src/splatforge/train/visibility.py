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


def camera_centres(viewmats: torch.Tensor) -> torch.Tensor:
    """``[C, 3]`` camera centres ``-R^T t`` of ``[C, 4, 4]`` world-to-camera matrices."""
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    return -torch.einsum("cji,cj->ci", R, t)


def camera_clearance(points: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                     sizes: torch.Tensor, fraction: float) -> torch.Tensor:
    """Radius of the free ball around each camera: ``fraction`` times the median depth of the
    SfM points in its view.

    The space right around a camera that photographed the scene is air: a surface there would
    fill its photo. Gaussians that drift there are seen by the photos only at a grazing angle or
    against a uniform backdrop, so nothing in the loss removes them, yet they stand in front
    of any novel view taken nearby (the held-out views of an orbit capture).

    Args:
        points: ``[P, 3]`` SfM points (world frame).
        viewmats, Ks, sizes: as :func:`in_any_frustum`, ``C`` cameras.
        fraction: the radius as a fraction of the median point depth (0 = no clearance).

    Returns:
        ``[C]`` radii in scene units (0 for a camera that sees no point).
    """
    radii = torch.zeros(viewmats.shape[0], dtype=torch.float32, device=viewmats.device)
    if fraction <= 0 or points.shape[0] == 0:
        return radii
    for c in range(viewmats.shape[0]):
        pc = points @ viewmats[c, :3, :3].T + viewmats[c, :3, 3]
        z = pc[:, 2]
        front = z > 1e-6
        u = Ks[c, 0, 0] * pc[:, 0] / z.clamp_min(1e-6) + Ks[c, 0, 2]
        v = Ks[c, 1, 1] * pc[:, 1] / z.clamp_min(1e-6) + Ks[c, 1, 2]
        inside = front & (u >= 0) & (u < sizes[c, 0]) & (v >= 0) & (v < sizes[c, 1])
        if inside.any():
            radii[c] = fraction * z[inside].median()
    return radii


def near_cameras(means: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                 chunk: int = 65536) -> torch.Tensor:
    """``[N]`` bool: the centre lies within ``radii[c]`` of some camera centre ``centres[c]``.

    Args:
        means: ``[N, 3]``. centres: ``[C, 3]``. radii: ``[C]`` (scene units).
    """
    out = torch.zeros(means.shape[0], dtype=torch.bool, device=means.device)
    keep = radii > 0
    if not bool(keep.any()):
        return out
    centres, radii = centres[keep], radii[keep]
    x = means.detach()
    for s in range(0, x.shape[0], chunk):
        d = torch.cdist(x[s:s + chunk], centres)                       # [n, C]
        out[s:s + chunk] = (d < radii[None, :]).any(dim=1)
    return out
