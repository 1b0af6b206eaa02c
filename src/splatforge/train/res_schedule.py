"""A coarse-to-fine resolution schedule for training (DashGaussian, Chen et al., CVPR 2025).

DashGaussian observes that early 3DGS optimisation fits low frequencies that a downscaled
image already holds, so it renders small images first and raises the resolution as training
goes, growing the number of Gaussians with it; it reports about half the training time at
equal quality. This module keeps the idea and a fixed schedule (DashGaussian chooses its
steps from the images' frequency content):

* ``levels`` downscale factors, geometric from ``start`` to 1: ``f_i = start^(1 - i/(L-1))``;
* levels ``0 .. L-2`` share steps ``1 .. until_step - 1`` equally, full resolution from
  ``until_step`` on;
* the Gaussian budget follows the image side: ``cap(step) = cap_full / f(step)``.

At factor ``f`` an image of ``W x H`` is rendered at ``round(W / f) x round(H / f)`` with the
intrinsics scaled by the same ratios per axis (pixel coordinates are continuous, so ``fx, cx``
scale by ``W' / W`` and ``fy, cy`` by ``H' / H``), and the photo is reduced by area averaging
(``torch.nn.functional.interpolate(mode="area")``), rounded back to uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ResolutionSchedule:
    """Downscale factor and budget fraction per training step (module docstring).

    Args:
        start: first downscale factor (>= 1).
        levels: number of resolutions (>= 1; 1 = full resolution throughout).
        until_step: first step at full resolution (>= 1).
    """

    start: float
    levels: int
    until_step: int

    def __post_init__(self) -> None:
        if self.start < 1 or self.levels < 1 or self.until_step < 1:
            raise ValueError(f"invalid resolution schedule: start {self.start}, levels "
                             f"{self.levels}, until_step {self.until_step}")

    def level(self, step: int) -> int:
        """Level index ``0 .. levels - 1`` at ``step`` (1-based)."""
        if self.levels == 1 or step >= self.until_step:
            return self.levels - 1
        span = (self.until_step - 1) / (self.levels - 1)
        return min(self.levels - 2, int((step - 1) // span))

    def factor(self, step: int) -> float:
        """Downscale factor at ``step`` (1.0 = full resolution)."""
        i = self.level(step)
        if self.levels == 1:
            return 1.0
        return float(self.start ** (1.0 - i / (self.levels - 1)))

    def budget_fraction(self, step: int) -> float:
        """Fraction of the full Gaussian budget allowed at ``step``: ``1 / factor``."""
        return 1.0 / self.factor(step)


def scaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """``(round(W / f), round(H / f))``, at least 1 pixel each."""
    return max(1, int(round(width / factor))), max(1, int(round(height / factor)))


def downscale_view(image_u8: torch.Tensor, K: torch.Tensor, factor: float
                   ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """A training view at ``1 / factor`` of its size.

    Args:
        image_u8: ``[H, W, 3]`` uint8 photo.
        K: ``[..., 3, 3]`` pinhole intrinsics of it, pixels.
        factor: downscale factor (>= 1; 1 returns the inputs).

    Returns:
        ``(image [H', W', 3] uint8, K' like K, W', H')``.
    """
    h, w = int(image_u8.shape[0]), int(image_u8.shape[1])
    if factor <= 1.0 or not math.isfinite(factor):
        return image_u8, K, w, h
    w2, h2 = scaled_size(w, h, factor)
    x = image_u8.permute(2, 0, 1)[None].float()
    small = F.interpolate(x, size=(h2, w2), mode="area")[0].permute(1, 2, 0)
    small = small.round_().clamp_(0, 255).to(torch.uint8).contiguous()
    k2 = K.clone()
    k2[..., 0, :] *= w2 / w
    k2[..., 1, :] *= h2 / h
    k2[..., 2, :] = K[..., 2, :]
    return small, k2, w2, h2
