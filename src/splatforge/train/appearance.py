"""Per-image appearance compensation for in-the-wild captures (``TrainConfig.appearance``).

Photos of one scene taken under different skies, exposures or white balances cannot be
explained by one set of view-dependent colours; without compensation the optimiser bakes the
differences into floaters and muddy colours. Two models, both learned jointly with the splats:

* ``embedding`` (:class:`EmbeddingAppearance`): a learned embedding per training image
  (``[num_images, D]``) and a learned feature per Gaussian (``app_features [N, F]``, densified
  with the splats) feed a small MLP that predicts, per Gaussian and image, a colour gain ``g``
  and offset ``o`` (``[N, 3]`` each)::

      c' = 0.5 + (1 + g) * (c - 0.5) + o

  where ``c = 0.5 + sum_lm sh_lm Y_lm(d)`` is the SH colour before clamping. This is the idea
  of NeRF-W (Martin-Brualla et al. 2021, per-image appearance embeddings), of nerfstudio's
  splatfacto-w and of gsplat's ``--app_opt`` (``examples/simple_trainer.py``
  ``AppearanceOptModule``: embedding + per-Gaussian features -> MLP -> colour). Unlike gsplat's
  module the MLP here does not see the view direction, and its output acts on the SH
  coefficients (``sh0 <- (1 + g) sh0 + o / C0``, ``shN <- (1 + g) shN``), which is the formula
  above exactly, so the model can be *baked* into plain SH for export (:meth:`bake`): with the
  mean embedding the exported PLY reproduces the "average appearance" render bit for bit
  (up to float rounding). The last MLP layer starts at zero, so training starts from
  ``c' = c``.
* ``bilateral`` (:class:`BilateralGridAppearance`): a per-image bilateral grid of 3x4 affine
  colour transforms, ``[num_images, 12, L, Gh, Gw]`` (gsplat's default 8 x 16 x 16), sliced at
  every pixel by ``(x, y, luminance)`` with trilinear interpolation and applied to the rendered
  image (Wang et al. 2024, "Bilateral Guided Radiance Field Processing", as gsplat's
  ``--use_bilateral_grid``; slicing here is :func:`torch.nn.functional.grid_sample` on the 5-D
  grid). Grids start at the identity and are regularised by total variation (weight 10, as
  gsplat). The grid acts on the image, so nothing can be baked: exports hold the splats'
  canonical colours (the appearance that the identity grid renders).

Held-out views have no learned embedding or grid: they are rendered with the mean embedding
(``embedding``) or the identity (``bilateral``), i.e. exactly what the exported PLY shows, and
scored with plain and colour-corrected PSNR/SSIM (:func:`color_correct`, the protocol gsplat's
trainer reports as ``cc_psnr``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..splats import PARAM_NAMES

#: SH band-0 constant ``1 / (2 sqrt(pi))`` (colour = C0 * sh0 + 0.5).
SH_C0 = 0.28209479177387814

#: Name of the per-Gaussian appearance feature in the trainer's parameter dict.
FEATURES = "app_features"


class EmbeddingAppearance(torch.nn.Module):
    """Per-image embedding + per-Gaussian feature -> MLP -> per-Gaussian colour gain/offset.

    Args:
        num_images: images in the scene (embedding rows; only training rows are learned).
        train_indices: the training images (their mean embedding renders held-out views).
        embed_dim: ``D`` of the image embeddings.
        feature_dim: ``F`` of the per-Gaussian features (the parameter itself lives in the
            trainer's splat dict as :data:`FEATURES`, so densification copies it).
        hidden: width of the two hidden layers.
    """

    kind = "embedding"

    def __init__(self, num_images: int, train_indices: list[int], embed_dim: int = 16,
                 feature_dim: int = 16, hidden: int = 64):
        super().__init__()
        self.feature_dim = feature_dim
        self.embeds = torch.nn.Embedding(num_images, embed_dim)
        torch.nn.init.normal_(self.embeds.weight, std=0.1)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(embed_dim + feature_dim, hidden), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(hidden, 6))
        torch.nn.init.zeros_(self.mlp[-1].weight)
        torch.nn.init.zeros_(self.mlp[-1].bias)
        self.register_buffer("train_ids", torch.as_tensor(list(train_indices), dtype=torch.long),
                             persistent=False)

    def init_features(self, n: int, device: torch.device, generator: torch.Generator | None
                      = None) -> torch.Tensor:
        """``[n, F]`` initial per-Gaussian features (N(0, 0.1^2), seeded)."""
        return (torch.randn(n, self.feature_dim, generator=generator) * 0.1).to(device)

    def embedding(self, index: int | None) -> torch.Tensor:
        """``[D]`` embedding of image ``index``; None: the mean over the training images."""
        if index is None:
            return self.embeds(self.train_ids.to(self.embeds.weight.device)).mean(0)
        return self.embeds.weight[int(index)]

    def gain_offset(self, features: torch.Tensor, index: int | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 + g, o)``, each ``[N, 3]``, for Gaussians with ``features [N, F]``."""
        e = self.embedding(index)
        x = torch.cat([e.expand(features.shape[0], -1), features], dim=1)
        out = self.mlp(x)
        return 1.0 + out[:, :3], out[:, 3:]

    def render_params(self, params: dict[str, torch.Tensor], index: int | None
                      ) -> dict[str, torch.Tensor]:
        """Splat parameters with this image's appearance folded into ``sh0``/``shN``.

        Args:
            params: the trainer's splats (``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]``,
                ``app_features [N, F]``, ...).
            index: image index, or None for the mean embedding (held-out views, export).

        Returns:
            a new dict (same tensors except ``sh0``/``shN``; differentiable).
        """
        gain, offset = self.gain_offset(params[FEATURES], index)
        out = dict(params)
        out["sh0"] = params["sh0"] * gain[:, None, :] + (offset / SH_C0)[:, None, :]
        out["shN"] = params["shN"] * gain[:, None, :]
        return out

    def apply_image(self, render: torch.Tensor, index: int | None) -> torch.Tensor:
        return render

    def regularization(self, index: int) -> torch.Tensor | None:
        return None

    @torch.no_grad()
    def bake(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The six standard splat parameters with the mean appearance baked into the SH
        (``sh0 <- (1 + g) sh0 + o / C0``, ``shN <- (1 + g) shN`` with the mean embedding)."""
        p = self.render_params({k: v.detach() for k, v in params.items()}, None)
        return {k: p[k] for k in PARAM_NAMES}


class BilateralGridAppearance(torch.nn.Module):
    """Per-image bilateral grids of affine colour transforms (Wang et al. 2024).

    Args:
        num_images: images in the scene (one grid each; held-out ones are never used).
        grid_shape: ``(Gw, Gh, L)``: cells along x, y and luminance (gsplat: 16, 16, 8).
        tv_weight: weight of the total-variation loss (gsplat ``bilateral_grid_tv`` 10).
    """

    kind = "bilateral"

    def __init__(self, num_images: int, grid_shape: tuple[int, int, int] = (16, 16, 8),
                 tv_weight: float = 10.0):
        super().__init__()
        gw, gh, gl = grid_shape
        eye = torch.eye(3, 4).reshape(12, 1, 1, 1)
        self.grids = torch.nn.Parameter(eye.expand(12, gl, gh, gw).repeat(num_images, 1, 1, 1, 1)
                                        .reshape(num_images, 12, gl, gh, gw).contiguous())
        self.tv_weight = tv_weight

    def render_params(self, params: dict[str, torch.Tensor], index: int | None
                      ) -> dict[str, torch.Tensor]:
        return params

    def slice(self, rgb: torch.Tensor, index: int) -> torch.Tensor:
        """``[H, W, 3, 4]`` affine transforms of image ``index`` at each pixel of ``rgb``.

        The guide is the pixel position (x, y in [-1, 1], pixel centres) and its luminance
        ``0.299 r + 0.587 g + 0.114 b`` (clamped to [0, 1], mapped to [-1, 1]); trilinear
        interpolation with border clamping.
        """
        H, W = rgb.shape[:2]
        dev = rgb.device
        ys = (torch.arange(H, device=dev, dtype=rgb.dtype) + 0.5) / H * 2 - 1
        xs = (torch.arange(W, device=dev, dtype=rgb.dtype) + 0.5) / W * 2 - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        lum = (rgb @ torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=rgb.dtype)
               ).clamp(0, 1) * 2 - 1
        coords = torch.stack([gx, gy, lum], dim=-1)[None, None]           # [1, 1, H, W, 3]
        a = F.grid_sample(self.grids[index:index + 1], coords, mode="bilinear",
                          padding_mode="border", align_corners=True)      # [1, 12, 1, H, W]
        return a[0, :, 0].permute(1, 2, 0).reshape(H, W, 3, 4)

    def apply_image(self, render: torch.Tensor, index: int | None) -> torch.Tensor:
        """``[1, H, W, 3]`` render -> the render seen through image ``index``'s grid
        (None: unchanged, the identity)."""
        if index is None:
            return render
        A = self.slice(render[0], int(index))
        out = (A[..., :3] @ render[0][..., None])[..., 0] + A[..., 3]
        return out[None]

    def regularization(self, index: int) -> torch.Tensor:
        """Total variation of image ``index``'s grid: mean squared difference of neighbouring
        cells along x, y and luminance, times ``tv_weight``."""
        g = self.grids[index]
        tv = ((g[:, :, :, 1:] - g[:, :, :, :-1]) ** 2).mean() \
            + ((g[:, :, 1:] - g[:, :, :-1]) ** 2).mean() \
            + ((g[:, 1:] - g[:, :-1]) ** 2).mean()
        return self.tv_weight * tv

    @torch.no_grad()
    def bake(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The six standard parameters unchanged (an image-space grid cannot be baked)."""
        return {k: params[k].detach() for k in PARAM_NAMES}


#: Learning rates: (module parameters, per-Gaussian features). gsplat's simple_trainer uses
#: 1e-3 for embeddings/features, 1e-4 for the MLP and 2e-3 for bilateral grids.
EMBED_LR = 5e-3
MLP_LR = 1e-3
FEATURES_LR = 2.5e-3
GRID_LR = 2e-3


def build_appearance(kind: str, num_images: int, train_indices: list[int],
                     device: torch.device) -> torch.nn.Module | None:
    """The appearance model for ``TrainConfig.appearance`` (None for ``none``).

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "none":
        return None
    if kind == "embedding":
        return EmbeddingAppearance(num_images, train_indices).to(device)
    if kind == "bilateral":
        return BilateralGridAppearance(num_images).to(device)
    raise ValueError(f"unknown appearance model {kind!r}")


def make_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam over the module's own parameters (not the per-Gaussian features)."""
    if isinstance(module, EmbeddingAppearance):
        groups = [{"params": list(module.embeds.parameters()), "lr": EMBED_LR},
                  {"params": list(module.mlp.parameters()), "lr": MLP_LR}]
    else:
        groups = [{"params": [module.grids], "lr": GRID_LR}]
    return torch.optim.Adam(groups, eps=1e-15)


# --------------------------------------------------------------------------------------------
# Colour-corrected metrics
# --------------------------------------------------------------------------------------------

def _quadratic_features(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-1)
    one = torch.ones_like(r)
    return torch.stack([r, g, b, r * r, g * g, b * b, r * g, g * b, b * r, one], dim=-1)


@torch.no_grad()
def color_correct(img: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None,
                  eps: float = 1.0 / 255.0) -> torch.Tensor:
    """``img`` with the per-image colour transform that best maps it to ``ref``.

    Each output channel is a quadratic polynomial of the input RGB (r, g, b, their squares
    and pairwise products, a constant: 10 terms), fitted by least squares over the pixels that
    are not saturated in either image (``eps < v < 1 - eps`` in every channel) and, with
    ``mask``, inside the mask. This is the colour correction of Mip-NeRF 360's / multinerf's
    ``image.color_correct`` that gsplat's trainer applies before its ``cc_psnr`` (one
    least-squares solve instead of multinerf's iterated one).

    Args:
        img, ref: ``[H, W, 3]`` float images in [0, 1] (render and photo).
        mask: optional ``[H, W]`` bool, pixels to fit on.

    Returns:
        ``[H, W, 3]`` corrected ``img``, clamped to [0, 1].
    """
    X = _quadratic_features(img.double().reshape(-1, 3))
    Y = ref.double().reshape(-1, 3)
    ok = ((img.reshape(-1, 3) > eps) & (img.reshape(-1, 3) < 1 - eps)
          & (ref.reshape(-1, 3) > eps) & (ref.reshape(-1, 3) < 1 - eps)).all(-1)
    if mask is not None:
        ok &= mask.reshape(-1).bool()
    if int(ok.sum()) < 20:
        ok = torch.ones_like(ok) if mask is None else mask.reshape(-1).bool()
    Xo, Yo = X[ok], Y[ok]
    # ridge-stabilised normal equations (10 x 10): robust on near-constant images
    A = Xo.T @ Xo + 1e-6 * torch.eye(10, dtype=X.dtype, device=X.device)
    W = torch.linalg.solve(A, Xo.T @ Yo)
    return (X @ W).reshape(img.shape).clamp(0, 1).to(img.dtype)


def state_for_checkpoint(module: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``{"kind", "module", "optimizer"}`` on the CPU for a checkpoint."""
    def cpu(sd):
        return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else
                    (cpu(v) if isinstance(v, dict) else v)) for k, v in sd.items()}

    return {"kind": module.kind, "module": cpu(module.state_dict()),
            "optimizer": cpu(opt.state_dict())}
