"""The one artifact manifest: the store layout under ``outputs/{id}/`` of every front door.

A finished ``reconstruct`` folder ``<out>`` (see :mod:`splatforge.pipeline`) is published as::

    outputs/{id}/point_cloud/iteration_N/point_cloud.ply   INRIA model layout at the root
    outputs/{id}/cameras.json                              (what ply-to-splat converters and
    outputs/{id}/cfg_args                                   the INRIA viewers expect)
    outputs/{id}/input.ply
    outputs/{id}/point_cloud.ply        the final model again, under the name the service's
                                        routes serve (GET /scene/{id}/gsplat/model,
                                        /scenes/{id}/artifacts/point_cloud.ply, the viewer)
    outputs/{id}/scene.splat            web formats (when written)
    outputs/{id}/scene.spz
    outputs/{id}/scene.sog
    outputs/{id}/metrics.json           training + held-out metrics
    outputs/{id}/config.json            the resolved configuration of every stage
    outputs/{id}/train_log.jsonl
    outputs/{id}/reconstruct.json       the pipeline summary
    outputs/{id}/eval/metrics.csv       per-view held-out metrics
    outputs/{id}/renders/<view>.png     held-out renders

Every front door (the service runner, the AWS worker) publishes exactly
:func:`artifact_files`; every reader finds the model through :func:`model_key`, which also
accepts a prefix that holds only the INRIA layout (written by an older worker).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..export.model_dir import iteration_key

#: Files of ``<out>/model`` published under the same relative name.
MODEL_FILES = ("cameras.json", "cfg_args", "input.ply", "metrics.json", "config.json",
               "train_log.jsonl", "eval/metrics.csv")
#: Files of ``<out>`` published under the same name.
SCENE_FILES = ("scene.splat", "scene.spz", "scene.sog", "reconstruct.json")
#: The served name of the final model.
MODEL_NAME = "point_cloud.ply"
#: Held-out renders: ``<out>/model/eval/*.png`` -> ``renders/<name>``.
RENDERS_PREFIX = "renders/"
#: Artifact names in the order a viewer or a download route picks the scene's model.
MODEL_ARTIFACTS = (MODEL_NAME, "scene.spz", "scene.sog", "scene.splat")
#: Every fixed artifact name (the ``point_cloud/iteration_N/`` and ``renders/`` names vary).
ARTIFACT_NAMES = ("point_cloud/iteration_{N}/point_cloud.ply", MODEL_NAME, *MODEL_FILES,
                  *SCENE_FILES, RENDERS_PREFIX + "{view}.png")

_ITERATION = re.compile(r"^point_cloud/iteration_(\d+)/point_cloud\.ply$")


def artifact_files(out: Path, step: int) -> dict[str, Path]:
    """Artifact name (relative to ``outputs/{id}/``) -> local file of a finished run.

    Args:
        out: the ``reconstruct`` output folder.
        step: the final training step (``ReconstructResult.step``).

    Raises:
        FileNotFoundError: the final point cloud ``<out>/model/point_cloud/iteration_<step>/``
            is missing (a run that did not finish has nothing to publish).
    """
    out = Path(out)
    model = out / "model"
    ply = model / iteration_key(step)
    if not ply.is_file():
        raise FileNotFoundError(f"training produced no final point cloud "
                                f"({iteration_key(step)})")
    files: dict[str, Path] = {iteration_key(step): ply, MODEL_NAME: ply}
    for rel in MODEL_FILES:
        if (model / rel).is_file():
            files[rel] = model / rel
    for name in SCENE_FILES:
        if (out / name).is_file():
            files[name] = out / name
    ev = model / "eval"
    if ev.is_dir():
        for p in sorted(ev.iterdir()):
            if p.is_file() and p.suffix.lower() in (".png", ".jpg"):
                files[RENDERS_PREFIX + p.name] = p
    return files


def sfm_files(workspace: Path) -> dict[str, Path]:
    """Artifact name -> file of an SfM-only run: ``images/``, ``sparse/``, ``sfm.json`` of the
    workspace (the COLMAP output a later training job reads)."""
    ws = Path(workspace)
    return {p.relative_to(ws).as_posix(): p for p in sorted(ws.rglob("*"))
            if p.is_file() and p.relative_to(ws).parts[0] in ("images", "sparse", "sfm.json")}


def model_key(names: list[str] | set[str]) -> str | None:
    """The name of a prefix's model among its artifact ``names``: ``point_cloud.ply``, else
    the highest ``point_cloud/iteration_N/point_cloud.ply``, else ``scene.spz`` /
    ``scene.sog`` / ``scene.splat``; None when there is none."""
    names = set(names)
    if MODEL_NAME in names:
        return MODEL_NAME
    its = sorted((int(m.group(1)), n) for n in names if (m := _ITERATION.match(n)))
    if its:
        return its[-1][1]
    return next((n for n in MODEL_ARTIFACTS if n in names), None)
