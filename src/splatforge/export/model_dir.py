"""The INRIA 3DGS model folder: :class:`ModelDir` names every file in it, and the writers of
the files besides the splat PLYs.

Layout, and who writes each name (each file is written once per run, by its owner)::

    <model_dir>/point_cloud/iteration_N/point_cloud.ply  splats, source frame   the trainer
    <model_dir>/ckpts/step_N.pt                          checkpoints            the trainer
    <model_dir>/train_log.jsonl, train_config.json       log, options           the trainer
    <model_dir>/metrics.json                             train + eval metrics   the trainer,
                                                                                eval merges
    <model_dir>/cameras.json, cfg_args, input.ply        INRIA companions       the trainer
                                                         (refined poses with pose_opt)
    <model_dir>/sparse_refined/                          refined COLMAP model   the trainer
    <model_dir>/eval/                                    held-out renders, CSV  eval
    <model_dir>/config.json                              every stage's options  reconstruct

INRIA's ``train.py`` / ``scene/__init__.py`` write, next to the PLYs::

    <model_dir>/cameras.json   every camera (``utils/camera_utils.py`` ``camera_to_JSON``)
    <model_dir>/cfg_args       str(Namespace(...)) of the model parameters (``train.py``
                               ``prepare_output_and_logger``)
    <model_dir>/input.ply      the SfM points (``scene/dataset_readers.py`` ``storePly``)

Downstream converters and viewers (SIBR, SuperSplat's importer, nerfstudio's ``ns-export``
readers, 3DGS-to-mesh tools) read these. Everything is written in the ORIGINAL source frame
(COLMAP's world, or the transforms.json world), the frame of the trainer's PLYs: the reader's
normalisation (``Scene.transform``, translation + uniform scale) is undone.
"""

from __future__ import annotations

import json
import re
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..util import atomic_path, atomic_write_text

CAMERAS_NAME = "cameras.json"
CFG_ARGS_NAME = "cfg_args"
INPUT_PLY_NAME = "input.ply"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"
TRAIN_LOG_NAME = "train_log.jsonl"
TRAIN_CONFIG_NAME = "train_config.json"
CHECKPOINT_DIR = "ckpts"
POINT_CLOUD_DIR = "point_cloud"
EVAL_DIR = "eval"
REFINED_SPARSE_DIR = "sparse_refined"
#: The INRIA companions :meth:`ModelDir.write_inria_files` writes.
INRIA_FILES = (CAMERAS_NAME, CFG_ARGS_NAME, INPUT_PLY_NAME)

_ITERATION_DIR = re.compile(r"^iteration_(\d+)$")
_CHECKPOINT = re.compile(r"^step_(\d+)\.pt$")


def iteration_key(step: int) -> str:
    """``point_cloud/iteration_<step>/point_cloud.ply``: the PLY of ``step`` relative to the
    model folder (also its key in the artifact store)."""
    return f"{POINT_CLOUD_DIR}/iteration_{int(step)}/point_cloud.ply"


@dataclass(frozen=True)
class ModelDir:
    """The INRIA model folder at ``root``: the one place that spells its file names (see the
    module docstring for who writes which). Only paths; nothing is read or created until a
    method says so.

    Attributes:
        root: the folder (it need not exist yet).
    """

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # -- names ----------------------------------------------------------------------------
    def point_cloud(self, step: int) -> Path:
        """``<root>/point_cloud/iteration_<step>/point_cloud.ply``."""
        return self.root / iteration_key(step)

    def checkpoint(self, step: int) -> Path:
        """``<root>/ckpts/step_<step>.pt``."""
        return self.checkpoints_dir / f"step_{int(step)}.pt"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_NAME

    @property
    def cameras(self) -> Path:
        return self.root / CAMERAS_NAME

    @property
    def cfg_args(self) -> Path:
        return self.root / CFG_ARGS_NAME

    @property
    def input_ply(self) -> Path:
        return self.root / INPUT_PLY_NAME

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG_NAME

    @property
    def train_config(self) -> Path:
        return self.root / TRAIN_CONFIG_NAME

    @property
    def eval_dir(self) -> Path:
        return self.root / EVAL_DIR

    @property
    def inria_files(self) -> list[Path]:
        """``cameras.json``, ``cfg_args``, ``input.ply``."""
        return [self.root / n for n in INRIA_FILES]

    # -- what is there --------------------------------------------------------------------
    def iterations(self) -> list[int]:
        """Sorted steps N that have ``point_cloud/iteration_N/point_cloud.ply``."""
        d = self.root / POINT_CLOUD_DIR
        if not d.is_dir():
            return []
        out = []
        for sub in d.iterdir():
            m = _ITERATION_DIR.match(sub.name)
            if m and (sub / "point_cloud.ply").is_file():
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_point_cloud(self) -> Path | None:
        """The PLY of the highest iteration, or None."""
        its = self.iterations()
        return self.point_cloud(its[-1]) if its else None

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every ``ckpts/step_N.pt``, by step."""
        d = self.checkpoints_dir
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = _CHECKPOINT.match(p.name)
            if m and p.is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` as a dict, or None when it is missing or not JSON."""
        try:
            return json.loads(self.metrics.read_text())
        except (OSError, ValueError):
            return None

    def train_options(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields the model was trained with, as JSON: from
        ``train_config.json`` (the trainer's), else ``config.json`` (``reconstruct``'s, also
        published with the model); ``{}`` when neither is there or readable."""
        for path in (self.train_config, self.config):
            try:
                train = json.loads(path.read_text()).get("train")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(train, dict):
                return train
        return {}

    # -- writers (each called by the owner of its files) -----------------------------------
    def write_inria_files(self, scene: Any, **kwargs: Any) -> dict[str, Path]:
        """``cameras.json``, ``cfg_args``, ``input.ply``: see :func:`write_model_dir_files`
        (same arguments). Written by the trainer, which holds the refined poses."""
        return write_model_dir_files(self.root, scene, **kwargs)

    def write_config(self, config: dict[str, Any]) -> Path:
        """``config.json``: every stage's resolved options (``splatforge reconstruct``),
        written atomically. Returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, json.dumps(config, indent=2, default=str) + "\n")
        return self.config


def camera_entries(scene: Any) -> list[dict[str, Any]]:
    """``cameras.json`` entries of every image of ``scene``, as INRIA's ``camera_to_JSON``.

    INRIA lists the test cameras first, then the training cameras (``scene/__init__.py``:
    ``camlist.extend(test_cameras); camlist.extend(train_cameras)``), ids counting from 0 over
    that list. Each entry::

        {"id": int, "img_name": name without extension (INRIA's image_name),
         "width": px, "height": px,                  # the images as trained (data_factor)
         "position": [3] camera centre in world (the C2W translation), source units,
         "rotation": [[3], [3], [3]] C2W rotation (OpenCV axes: x right, y down, z forward),
         "fy": px, "fx": px}

    (INRIA calls the matrix ``W2C`` but it is ``inv([R^T | T])``, the camera-to-world.)

    Args:
        scene: a :class:`splatforge.scene.Scene` (normalised or not).

    Returns:
        list of dicts in INRIA's order.
    """
    order = list(scene.test_indices) + list(scene.train_indices)
    seen = set(order)
    order += [i for i in range(len(scene.images)) if i not in seen]
    inv = np.linalg.inv(np.asarray(scene.transform, np.float64))
    s = scene.scale
    out = []
    for cid, i in enumerate(order):
        im = scene.images[i]
        c2w = np.linalg.inv(np.asarray(im.viewmat, np.float64))
        pos = inv[:3, :3] @ c2w[:3, 3] + inv[:3, 3]
        rot = (inv[:3, :3] * s) @ c2w[:3, :3]  # a pure scale transform leaves it unchanged
        out.append({
            "id": cid,
            "img_name": Path(im.name).stem,
            "width": int(im.width),
            "height": int(im.height),
            "position": [float(v) for v in pos],
            "rotation": [[float(v) for v in row] for row in rot],
            "fy": float(im.K[1, 1]),
            "fx": float(im.K[0, 0]),
        })
    return out


def write_cameras_json(model_dir: str | Path, scene: Any) -> Path:
    """Write ``<model_dir>/cameras.json`` (see :func:`camera_entries`), atomically."""
    path = Path(model_dir) / CAMERAS_NAME
    atomic_write_text(path, json.dumps(camera_entries(scene)) + "\n")
    return path


def cfg_args_text(*, source_path: str | Path, model_path: str | Path, sh_degree: int,
                  images: str = "images", resolution: int = -1,
                  white_background: bool = False, data_device: str = "cuda",
                  eval: bool = True) -> str:
    """INRIA's ``cfg_args`` text: ``str(Namespace(...))`` of ``arguments/__init__.py``
    ``ModelParams`` in its field order, e.g. ``Namespace(sh_degree=3, source_path='/data',
    model_path='/out', images='images', resolution=-1, white_background=False,
    data_device='cuda', eval=True)``. INRIA's ``render.py`` and SIBR parse it with ``eval``."""
    ns = Namespace(sh_degree=int(sh_degree), source_path=str(source_path),
                   model_path=str(model_path), images=str(images), resolution=int(resolution),
                   white_background=bool(white_background), data_device=str(data_device),
                   eval=bool(eval))
    return str(ns)


def parse_cfg_args(path: str | Path) -> dict[str, Any]:
    """Read a ``cfg_args`` file (``Namespace(k=v, ...)``) into a dict, without ``eval``.

    Raises:
        ValueError: the text is not a ``Namespace(...)`` of Python literals.
    """
    import ast

    text = Path(path).read_text().strip()
    tree = ast.parse(text, mode="eval")
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "Namespace"):
        raise ValueError(f"{path}: not a Namespace(...) text")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def write_cfg_args(model_dir: str | Path, **kwargs: Any) -> Path:
    """Write ``<model_dir>/cfg_args`` (see :func:`cfg_args_text` for the arguments)."""
    model_dir = Path(model_dir)
    kwargs.setdefault("model_path", model_dir.resolve())
    path = model_dir / CFG_ARGS_NAME
    atomic_write_text(path, cfg_args_text(**kwargs))
    return path


def write_input_ply(path: str | Path, points: np.ndarray, rgb: np.ndarray) -> Path:
    """Write SfM points as INRIA's ``storePly``: one ``vertex`` element with ``x y z nx ny nz``
    (float32, normals zero) and ``red green blue`` (uchar), binary little-endian.

    Args:
        points: [P, 3] positions (source frame). rgb: [P, 3] uint8 colours.
    """
    from plyfile import PlyData, PlyElement

    xyz = np.asarray(points, np.float32).reshape(-1, 3)
    col = np.asarray(rgb).reshape(-1, 3)
    if len(col) != len(xyz):
        raise ValueError(f"{len(xyz)} points but {len(col)} colours")
    dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
             ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    arr = np.zeros(len(xyz), dtype=dtype)
    arr["x"], arr["y"], arr["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    arr["red"], arr["green"], arr["blue"] = (np.clip(col[:, k], 0, 255).astype(np.uint8)
                                             for k in range(3))
    path = Path(path)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp))
    return path


def write_model_dir_files(model_dir: str | Path, scene: Any, *, source_path: str | Path,
                          sh_degree: int, data_factor: int = 1, images: str | None = None,
                          device: str = "cuda") -> dict[str, Path]:
    """Write ``cameras.json``, ``cfg_args``, ``input.ply`` into ``model_dir``, all in the
    source frame (each atomically).

    Args:
        scene: the :class:`~splatforge.scene.Scene` the model was trained on.
        source_path: the dataset folder (cfg_args ``source_path``).
        sh_degree: the model's SH degree. data_factor: cfg_args ``resolution`` (-1 when 1).
        images: image folder name (default: the folder the scene read, else ``images``).
        device: the training device (cfg_args ``data_device``: ``cuda`` or ``cpu``).

    Returns:
        name -> path of each file written.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if images is None:
        folder = scene.info.get("image_folder") if isinstance(scene.info, dict) else None
        images = Path(folder).name if folder else "images"
    white = tuple(float(c) for c in scene.background) == (1.0, 1.0, 1.0)
    out = {
        CAMERAS_NAME: write_cameras_json(model_dir, scene),
        CFG_ARGS_NAME: write_cfg_args(
            model_dir, source_path=Path(source_path).resolve(), sh_degree=sh_degree,
            images=images, resolution=int(data_factor) if data_factor > 1 else -1,
            white_background=white,
            data_device="cuda" if str(device).startswith("cuda") else "cpu",
            eval=bool(scene.test_indices)),
        INPUT_PLY_NAME: write_input_ply(model_dir / INPUT_PLY_NAME,
                                        scene.to_source(np.asarray(scene.points, np.float64))
                                        if len(scene.points) else np.zeros((0, 3)),
                                        scene.points_rgb),
    }
    return out
