"""The ``splatforge`` command.

Subcommands are plain functions; their option groups are the stage config models of
:mod:`splatforge.config`, turned into flags by ``tyro`` (``--max-num-features 4096``,
``--data-factor 2``), so the CLI, the HTTP service and job JSON share one schema.
Errors a user can cause print one clear message (file and problem) and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import tyro

from .config import IngestConfig, SceneConfig, SfmConfig, TrainConfig
from .errors import SplatforgeError
from .progress import ConsoleEvents

Output = Annotated[Path, tyro.conf.arg(aliases=["-o"], help="Workspace folder to write.")]


def info(path: tyro.conf.Positional[Path], scene: SceneConfig = SceneConfig(),
         json_output: Annotated[bool, tyro.conf.arg(name="json")] = False) -> None:
    """Read a dataset (COLMAP, transforms.json, Blender, splatforge workspace) and print it.

    Args:
        path: dataset folder or transforms.json file.
        json_output: print a JSON summary instead of text.
    """
    from .scene import describe_scene, load_scene, scene_summary

    events = ConsoleEvents()
    try:
        sc = load_scene(path, scene, events)
    finally:
        events.close()
    if json_output:
        print(json.dumps(scene_summary(sc), indent=2, default=str))
    else:
        print(describe_scene(sc))


def ingest(media: tyro.conf.Positional[Path], output: Output,
           ingest: IngestConfig = IngestConfig()) -> None:
    """Turn a folder of images, a zip of them, or a video into <output>/input/ frames.

    Args:
        media: image folder, .zip, or video (mp4/mov/mkv/avi).
    """
    from .ingest import run_ingest

    events = ConsoleEvents()
    try:
        res = run_ingest(ingest, media, output, events)
    finally:
        events.close()
    print(f"{len(res.images)} images in {res.images_dir}"
          + (f" ({len(res.skipped)} skipped, see {output}/ingest.json)" if res.skipped else ""))


def sfm(media: tyro.conf.Positional[Path], output: Output, sfm: SfmConfig = SfmConfig(),
        ingest: IngestConfig = IngestConfig(), force: bool = False) -> None:
    """Photos or a video in, an undistorted COLMAP workspace out (images/, sparse/0/, sfm.json).

    Args:
        media: image folder, .zip, video, or <output>/input.
        force: run again even when <output>/sfm.json says it is finished.
    """
    from .sfm import run_sfm

    events = ConsoleEvents()
    try:
        res = run_sfm(sfm, media, output, events, ingest=ingest, force=force)
    finally:
        events.close()
    print(f"registered {res.num_registered}/{res.num_images} images, {res.num_points} points, "
          f"mean reprojection error {res.mean_reprojection_error:.3f} px -> {output}")
    if res.unregistered:
        print(f"unregistered: {', '.join(res.unregistered)}")


ModelDir = Annotated[Path, tyro.conf.arg(aliases=["-o"], help="Model folder to write.")]


def train(scene_path: tyro.conf.Positional[Path], output: ModelDir,
          train: TrainConfig = TrainConfig(), scene: SceneConfig = SceneConfig(),
          resume: bool = False, resume_from: Path | None = None) -> None:
    """Train a 3D Gaussian Splatting scene from a posed dataset (COLMAP, transforms.json,
    splatforge workspace) into <output>: point_cloud/iteration_N/point_cloud.ply, ckpts/,
    train_log.jsonl, metrics.json.

    Args:
        scene_path: dataset folder (or transforms.json).
        resume: continue from the latest checkpoint in <output>/ckpts (fresh when none).
        resume_from: continue from this checkpoint file (or the latest in this folder).
    """
    from .train import TrainingInterrupted, run_train

    events = ConsoleEvents()
    try:
        res = run_train(train, scene_path, output, events, scene_config=scene,
                        resume=resume_from if resume_from is not None else (resume or None))
    except TrainingInterrupted as e:
        events.close()
        where = f"; checkpoint {e.checkpoint}" if e.checkpoint else ""
        print(f"interrupted after step {e.step}{where}\nresume with: splatforge train "
              f"{scene_path} -o {output} --resume (and the same options)", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        events.close()
    m = res.metrics
    test = m.get("test", {})
    lines = [(f"trained {res.step} steps in {res.train_seconds:.1f} s "
              f"({res.steps_per_second:.2f} steps/s this session, {res.backend} on "
              f"{res.device}), {res.num_gaussians} Gaussians -> {output}")]
    if test.get("num_images"):
        lines.append(f"held-out views: {test['num_images']}, PSNR {test['psnr']:.2f} dB, "
                     f"SSIM {test['ssim']:.4f}")
    else:
        lines.append("no held-out views (test_every 0): no test metrics")
    for step, path in sorted(res.ply_paths.items()):
        lines.append(f"step {step}: {path}")
    print("\n".join(lines))


COMMANDS = {"info": info, "ingest": ingest, "sfm": sfm, "train": train}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``splatforge`` console script. Returns the exit status."""
    try:
        tyro.extras.subcommand_cli_from_dict(
            COMMANDS, prog="splatforge", args=argv,
            description="splatforge: photos or a video in, a 3D Gaussian Splatting scene out.",
            config=(tyro.conf.OmitArgPrefixes,))
    except SplatforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume (train: add --resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
