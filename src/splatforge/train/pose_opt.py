"""Camera pose refinement (``TrainConfig.pose_opt``): a learned SE(3) correction per image.

The idea of gsplat's ``CameraOptModule`` (``examples/utils.py``; ``--pose_opt`` in
``simple_trainer.py``): every training image ``i`` gets a 6-vector ``xi_i = (omega, tau)``,
initialised at zero (no correction), learned with a small learning rate together with the
splats. The corrected world-to-camera matrix is

    viewmat'_i = [[R(omega_i), tau_i], [0, 1]] @ viewmat_i

with ``R(omega) = exp([omega]_x)`` (Rodrigues' formula): a rotation by ``|omega|`` radians
about ``omega`` and a translation ``tau`` in scene units, both in the camera frame. (gsplat
parameterises the rotation by a 6-D continuous representation; the axis-angle vector is the
same tangent space at zero.)

Protocol: held-out views get no correction (their poses are the dataset's); a test view's
error therefore includes any drift of the refined frame, as in gsplat's trainer and
nerfstudio's camera optimiser.
"""

from __future__ import annotations

import numpy as np
import torch

#: Learning rate of the corrections and the L2 weight on them (gsplat ``pose_opt_lr`` 1e-5,
#: ``pose_opt_reg`` 1e-6).
POSE_LR = 1e-5
POSE_REG = 1e-6


def axis_angle_to_matrix(omega: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` axis-angle vectors (radians) -> ``[..., 3, 3]`` rotations (Rodrigues),
    smooth at zero (Taylor terms below 1e-4 rad)."""
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]       # [..., 1, 1]
    theta = theta2.clamp_min(1e-16).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-16))
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*omega.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(Kx)
    return eye + a * Kx + b * (Kx @ Kx)


class PoseCorrection(torch.nn.Module):
    """``[num_images, 6]`` zero-initialised SE(3) corrections (see the module docstring).

    Args:
        num_images: images in the scene (held-out rows stay zero: they are never used).
    """

    def __init__(self, num_images: int):
        super().__init__()
        self.deltas = torch.nn.Parameter(torch.zeros(num_images, 6))

    def matrix(self, index: int) -> torch.Tensor:
        """``[4, 4]`` correction of image ``index``."""
        d = self.deltas[int(index)]
        top = torch.cat([axis_angle_to_matrix(d[:3]), d[3:, None]], dim=1)
        bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=d.dtype, device=d.device)
        return torch.cat([top, bottom], dim=0)

    def apply(self, viewmat: torch.Tensor, index: int) -> torch.Tensor:
        """``[1, 4, 4]`` viewmat of image ``index`` -> corrected (differentiable)."""
        return (self.matrix(index) @ viewmat[0])[None]

    def regularization(self, index: int) -> torch.Tensor:
        """``POSE_REG * |xi_index|^2``."""
        return POSE_REG * (self.deltas[int(index)] ** 2).sum()

    @torch.no_grad()
    def refined_viewmats(self, viewmats: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """index -> ``[4, 4]`` float64 corrected viewmat for the given original viewmats."""
        out = {}
        for i, v in viewmats.items():
            M = self.matrix(i).double().cpu().numpy()
            out[i] = M @ np.asarray(v, np.float64)
        return out


def make_optimizer(module: PoseCorrection, lr: float = POSE_LR) -> torch.optim.Optimizer:
    return torch.optim.Adam([module.deltas], lr=lr, eps=1e-15)


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in degrees of ``R_a R_b^T`` for two ``[4, 4]`` (or ``[3, 3]``) poses."""
    R = np.asarray(a)[:3, :3] @ np.asarray(b)[:3, :3].T
    c = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    return float(np.degrees(np.arccos(c)))


def viewmat_to_source(viewmat: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Inverse of :func:`splatforge.scene.loader.apply_similarity_to_viewmat`: a scene-frame
    viewmat ``[R | s t - R b]`` back to the source frame ``[R | t]`` (``T = [[s I, b], [0, 1]]``)."""
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    b = T[:3, 3]
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = (t + R @ b) / s
    return out


def write_refined_colmap(out_dir, scene, viewmats: dict[int, np.ndarray]) -> None:
    """A COLMAP model (``cameras.bin``, ``images.bin``, ``points3D.bin``, rigs/frames) of
    ``scene`` with the given scene-frame viewmats (other images as loaded), in the source
    frame, written by pycolmap 4.x.

    Cameras are the PINHOLE cameras the scene was trained with (after undistortion and
    ``data_factor``), one per distinct intrinsics; points are the scene's SfM points (no
    tracks).

    Raises:
        OSError: the folder cannot be written.
    """
    from pathlib import Path

    import pycolmap

    out_dir = Path(out_dir)
    rec = pycolmap.Reconstruction()
    cams: dict[tuple, int] = {}
    T = np.asarray(scene.transform, np.float64)
    for i, im in enumerate(scene.images):
        K = im.K
        key = (im.width, im.height, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
               float(K[1, 2]))
        if key not in cams:
            cam = pycolmap.Camera(model="PINHOLE", width=im.width, height=im.height,
                                  params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
                                  camera_id=len(cams) + 1)
            rec.add_camera_with_trivial_rig(cam)
            cams[key] = cam.camera_id
        V = viewmat_to_source(np.asarray(viewmats.get(i, im.viewmat), np.float64), T)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(V[:3, :3]), V[:3, 3])
        image = pycolmap.Image(name=im.name, camera_id=cams[key], image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pose)
    if len(scene.points):
        pts = scene.to_source(np.asarray(scene.points, np.float64))
        for p, c in zip(pts, np.asarray(scene.points_rgb, np.uint8)):
            rec.add_point3D(p, pycolmap.Track(), c)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec.write(str(out_dir))
