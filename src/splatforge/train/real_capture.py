"""The trainer's real-capture extras in one object: appearance model, pose refinement, masks.

:class:`CaptureExtras` is what :class:`splatforge.train.trainer.Trainer` calls at its few hook
points (render parameters, viewmat, rendered image, loss inputs and terms, optimiser step,
checkpoint, export, evaluation); with ``appearance none``, no ``pose_opt`` and no masks every
hook returns its input unchanged and no extra tensors exist.

Loss with masks (white = keep), ``TrainConfig.mask_mode``:

* ``ignore``: the render and the photo are both multiplied by the mask before the L1/SSIM
  loss, so masked-out pixels (of either) contribute nothing and receive no gradient, exactly;
  the loss is still averaged over all pixels (as gaussian-splatting-lightning's masked loss).
* ``background``: additionally ``mask_alpha_lambda * mean(alpha * (1 - mask))``, which pushes
  the rendered opacity to zero outside the object, so the trained scene is the object alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..splats import PARAM_NAMES
from . import appearance as app
from . import pose_opt as po


class MaskCache:
    """``[H, W, 1]`` float masks (1 = keep) of a scene's images on ``device``, decoded once.

    Masks are small (one byte per pixel on the host, kept as float32 on the device for the
    loss; 4 bytes per pixel); images without a mask give None.
    """

    def __init__(self, scene, device: torch.device):
        self.scene = scene
        self.device = device
        self._cache: dict[int, torch.Tensor | None] = {}

    def keep(self, index: int) -> torch.Tensor | None:
        """Image ``index``'s mask as ``[H, W]`` bool (True = scored), or None."""
        m = self.get(index)
        return None if m is None else m[..., 0] > 0.5

    def has_masks(self) -> bool:
        return any(im.mask_path is not None for im in self.scene.images)

    def get(self, index: int) -> torch.Tensor | None:
        if index not in self._cache:
            from ..scene.masks import load_mask

            im = self.scene.images[index]
            if im.mask_path is None:
                self._cache[index] = None
            else:
                m = load_mask(im.mask_path, (im.width, im.height))
                self._cache[index] = torch.from_numpy(m).to(self.device, torch.float32)[..., None]
        return self._cache[index]


class CaptureExtras:
    """Appearance, pose refinement and masks for one training run.

    Args:
        config: the :class:`~splatforge.config.TrainConfig`.
        scene: the scene being trained.
        device: the training device.
    """

    def __init__(self, config, scene, device: torch.device):
        self.config = config
        self.scene = scene
        self.device = device
        n = len(scene.images)
        self.appearance = app.build_appearance(config.appearance, n, scene.train_indices, device)
        self.app_opt = app.make_optimizer(self.appearance) if self.appearance is not None else None
        self.pose = po.PoseCorrection(n).to(device) if config.pose_opt else None
        self.pose_opt = (po.make_optimizer(self.pose, config.pose_opt_lr)
                         if self.pose is not None else None)
        self.masks = MaskCache(scene, device)
        self.use_masks = self.masks.has_masks()

    # ---- setup -----------------------------------------------------------------------------
    def add_gaussian_params(self, params: dict[str, torch.nn.Parameter],
                            optimizers: dict[str, torch.optim.Optimizer],
                            saved: dict[str, torch.Tensor] | None, seed: int) -> None:
        """Add the per-Gaussian appearance features to the trainer's splats (densified with
        them) and their Adam; ``saved``: a checkpoint's splats (features restored)."""
        if not isinstance(self.appearance, app.EmbeddingAppearance):
            return
        n = len(params["means"])
        if saved is not None and app.FEATURES in saved:
            t = saved[app.FEATURES].to(self.device)
        else:
            t = self.appearance.init_features(n, self.device,
                                              torch.Generator().manual_seed(seed + 7))
        params[app.FEATURES] = torch.nn.Parameter(t.contiguous())
        fused = {"fused": True} if self.device.type == "cuda" else {}
        optimizers[app.FEATURES] = torch.optim.Adam(
            [{"params": [params[app.FEATURES]], "lr": app.FEATURES_LR, "name": app.FEATURES}],
            eps=1e-15, betas=(0.9, 0.999), **fused)

    # ---- per step --------------------------------------------------------------------------
    def render_params(self, params: dict[str, torch.Tensor], index: int | None
                      ) -> dict[str, torch.Tensor]:
        if self.appearance is None:
            return params
        return self.appearance.render_params(params, index)

    def viewmat(self, viewmat: torch.Tensor, index: int) -> torch.Tensor:
        return viewmat if self.pose is None else self.pose.apply(viewmat, index)

    def post_render(self, render: torch.Tensor, index: int) -> torch.Tensor:
        return render if self.appearance is None else self.appearance.apply_image(render, index)

    def loss_inputs(self, render: torch.Tensor, gt_u8: torch.Tensor, index: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``render [H, W, 3]`` and ``gt_u8 [H, W, 3]`` uint8, both masked when image
        ``index`` has a mask (see the module docstring)."""
        if not self.use_masks:
            return render, gt_u8
        m = self._mask_at(index, render.shape[:2])
        if m is None:
            return render, gt_u8
        return render * m, gt_u8 * m.to(torch.uint8)

    def _mask_at(self, index: int, hw: tuple[int, int]) -> torch.Tensor | None:
        """Image ``index``'s mask ``[H, W, 1]`` at the rendered size ``hw`` (the resolution
        schedule renders below full size: the mask is area-averaged and re-thresholded at 0.5
        then), or None."""
        m = self.masks.get(index)
        if m is None or tuple(m.shape[:2]) == tuple(hw):
            return m
        small = torch.nn.functional.interpolate(
            m.permute(2, 0, 1)[None].float(), size=tuple(hw), mode="area")[0].permute(1, 2, 0)
        return (small >= 0.5).to(m.dtype)

    def loss_terms(self, alphas: torch.Tensor, index: int) -> torch.Tensor | None:
        """Extra loss terms of this step (appearance regulariser, pose prior, alpha outside
        the mask in ``background`` mode), or None."""
        out = []
        if self.appearance is not None:
            r = self.appearance.regularization(index)
            if r is not None:
                out.append(r)
        if self.pose is not None:
            out.append(self.pose.regularization(index))
        if self.use_masks and self.config.mask_mode == "background":
            m = self._mask_at(index, alphas.shape[1:3])
            if m is not None:
                out.append(self.config.mask_alpha_lambda * (alphas[0] * (1.0 - m)).mean())
        if not out:
            return None
        return torch.stack([t.reshape(()) for t in out]).sum()

    def step(self) -> None:
        """One Adam step of the appearance model and the pose corrections (then zero grads)."""
        for opt in (self.app_opt, self.pose_opt):
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)

    # ---- outputs ---------------------------------------------------------------------------
    def export_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The six standard splat parameters with the mean appearance baked in (detached)."""
        if self.appearance is None:
            return {k: params[k].detach() for k in PARAM_NAMES}
        return self.appearance.bake(params)

    def refined_viewmats(self) -> dict[int, np.ndarray]:
        """Training index -> refined ``[4, 4]`` scene-frame viewmat (empty without pose_opt)."""
        if self.pose is None:
            return {}
        return self.pose.refined_viewmats({i: self.scene.images[i].viewmat
                                           for i in self.scene.train_indices})

    def mask_fn(self):
        """``index -> [H, W] bool mask | None`` for masked evaluation (None when no masks)."""
        if not self.use_masks:
            return None
        return self.masks.keep

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.appearance is not None:
            out["appearance"] = app.state_for_checkpoint(self.appearance, self.app_opt)
        if self.pose is not None:
            out["pose"] = {"deltas": self.pose.deltas.detach().cpu(),
                           "optimizer": self.pose_opt.state_dict()}
        return out

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        if self.appearance is not None and "appearance" in state:
            self.appearance.load_state_dict(state["appearance"]["module"])
            self.app_opt.load_state_dict(state["appearance"]["optimizer"])
        if self.pose is not None and "pose" in state:
            with torch.no_grad():
                self.pose.deltas.copy_(state["pose"]["deltas"].to(self.device))
            self.pose_opt.load_state_dict(state["pose"]["optimizer"])

    def write_outputs(self, model_dir: Path) -> dict[str, Path]:
        """With pose_opt: ``sparse_refined/`` (COLMAP, source frame; see
        :func:`splatforge.train.pose_opt.write_refined_colmap`)."""
        if self.pose is None:
            return {}
        d = Path(model_dir) / "sparse_refined"
        po.write_refined_colmap(d, self.scene, self.refined_viewmats())
        return {"sparse_refined": d}

    def refined_scene(self):
        """A shallow copy of the scene whose training views carry the refined poses (for
        cameras.json); the scene itself when there is no pose refinement."""
        if self.pose is None:
            return self.scene
        import copy

        sc = copy.copy(self.scene)
        sc.images = [copy.copy(im) for im in self.scene.images]
        for i, v in self.refined_viewmats().items():
            sc.images[i].viewmat = v
        return sc
