"""The ``splatforge`` command.

Subcommands are plain functions; their option groups are the stage config models of
:mod:`splatforge.config`, turned into flags by ``tyro`` (``--max-num-features 4096``,
``--data-factor 2``), so the CLI, the HTTP service and job JSON share one schema.
Errors a user can cause print one clear message (file and problem) and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import tyro
from pydantic import BaseModel

from .config import IngestConfig, SceneConfig, SfmConfig, TrainConfig
from .errors import SplatforgeError
from .reconstruct_config import DEFAULT_PRESET, EvalConfig, PresetName, ReconstructConfig
from .progress import ConsoleEvents
from .viewer.command import ViewerOptions, finish_training_viewer, start_training_viewer, view

Output = Annotated[Path, tyro.conf.arg(aliases=["-o"], help="Workspace folder to write.")]

#: The arguments :func:`main` is parsing (None outside it): which options the user gave.
_ARGV: ContextVar[list[str] | None] = ContextVar("splatforge_argv", default=None)

M = TypeVar("M", bound=BaseModel)


def _flags(model: type[BaseModel]) -> dict[str, str]:
    """Option name (without ``--``) -> field, for every flag tyro makes of ``model``'s fields
    (the field name with dashes, a ``tyro.conf.arg`` name and aliases, ``no-`` for bools)."""
    out: dict[str, str] = {}
    for field, info in model.model_fields.items():
        names = [field.replace("_", "-")]
        for meta in info.metadata:  # tyro.conf.arg(name=..., aliases=...)
            if hasattr(meta, "aliases") and hasattr(meta, "prefix_name"):
                names = [meta.name] if meta.name else names
                names += list(meta.aliases or ())
        for n in names:
            n = n.lstrip("-").replace("_", "-")
            out[n] = out[f"no-{n}"] = field
    return out


def given_on_command_line(cfg: BaseModel, model: type[M]) -> M:
    """``cfg`` (a stage config tyro built, every field filled) as a ``model`` whose
    ``model_fields_set`` holds only the fields whose option :func:`main` saw on the command
    line, so that a preset fills the others (:func:`splatforge.presets.resolve_config`), and
    an option given with its default value still wins. Outside :func:`main` (a Python
    caller), ``cfg``'s own fields set are kept."""
    argv = _ARGV.get()
    if argv is None:
        return model.model_validate(cfg.model_dump(include=cfg.model_fields_set))
    flags = _flags(type(cfg))
    given = {flags[k] for k in (a[2:].split("=", 1)[0].replace("_", "-")
                                for a in argv if a.startswith("--")) if k in flags}
    return model.model_validate(cfg.model_dump(include=given))


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
    for d in res.left_out:
        print(f"  not posed: {d['image']}: {d['message']}")


ModelDir = Annotated[Path, tyro.conf.arg(aliases=["-o"], help="Model folder to write.")]


def train(scene_path: tyro.conf.Positional[Path], output: ModelDir,
          train: TrainConfig = TrainConfig(), scene: SceneConfig = SceneConfig(),
          resume: bool = False, resume_from: Path | None = None,
          viewer: ViewerOptions = ViewerOptions()) -> None:
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
    live = start_training_viewer(viewer)
    try:
        res = run_train(train, scene_path, output, live.events(events) if live else events,
                        scene_config=scene,
                        resume=resume_from if resume_from is not None else (resume or None),
                        step_hook=live.step_hook if live else None)
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
    finish_training_viewer(live, viewer)


def convert(input: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="INPUT")],
            output: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="OUTPUT")],
            sh_degree: int | None = None, spz_version: Literal[3, 4] = 4) -> None:
    """Convert a splat file between .ply (INRIA), .compressed.ply (PlayCanvas/SuperSplat),
    .splat (antimatter15), .spz (Niantic v4, or v3) and .sog (PlayCanvas SOG; a bundled .sog
    or a folder named by its meta.json), chosen by name. The output is written atomically; the
    input is never overwritten.

    Args:
        input: splat file to read.
        output: splat file to write.
        sh_degree: drop SH bands above this degree (0..3).
        spz_version: version of an .spz output (4 default; 3 for older readers).
    """
    from .export import convert as convert_file

    events = ConsoleEvents()
    try:
        res = convert_file(input, output, events, sh_degree=sh_degree, spz_version=spz_version)
    finally:
        events.close()
    print(f"{res.num_splats} splats, SH degree {res.sh_degree_out} -> {res.output}")


def compress(model_dir: tyro.conf.Positional[Path], keep: float = 0.5,
             target_mb: float | None = None, finetune_steps: int = 3000,
             sh_degree: int | None = None, iteration: int | None = None,
             device: str = "auto") -> None:
    """Make a trained model smaller at a measured cost: prune by global significance
    (LightGaussian), fine-tune the kept Gaussians, optionally drop SH bands; writes
    <model_dir>/point_cloud/iteration_N and <model_dir>/compress.json (Gaussians, file sizes
    per format, held-out PSNR/SSIM before and after).

    Args:
        model_dir: a model folder written by `splatforge train` or `reconstruct` (<out>/model).
        keep: fraction of Gaussians to keep (ignored with --target-mb).
        target_mb: instead, the size in MB of the output point_cloud.ply.
        finetune_steps: training steps after pruning (0: prune only).
        sh_degree: lower SH degree for the output (default: the model's).
        iteration: source iteration (default: the latest).
        device: auto | cpu | cuda | cuda:N.
    """
    from .compress import run_compress

    events = ConsoleEvents()
    try:
        rec = run_compress(model_dir, keep=None if target_mb is not None else keep,
                           target_mb=target_mb, finetune_steps=finetune_steps,
                           sh_degree=sh_degree, iteration=iteration, device=device,
                           events=events)
    finally:
        events.close()
    g, ho, by = rec["num_gaussians"], rec["heldout"], rec["bytes"]

    def db(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} dB"

    print(f"{g['before']} -> {g['after']} Gaussians; PLY {by['before']['ply'] / 1e6:.2f} -> "
          f"{by['after']['ply'] / 1e6:.2f} MB, SOG {by['after']['sog'] / 1e6:.2f} MB; "
          f"held-out PSNR {db(ho['before']['psnr'])} -> {db(ho['after']['psnr'])} -> "
          f"{model_dir}/{rec['ply']}")


def eval_cmd(model_dir: tyro.conf.Positional[Path], lpips_weights: Path | None = None,
         iteration: int | None = None, device: str = "auto") -> None:
    """Score a trained model on its held-out views: <model_dir>/eval/metrics.csv, one
    ground truth | render | error PNG per view in <model_dir>/eval/, means merged into
    <model_dir>/metrics.json.

    Args:
        model_dir: a model folder written by `splatforge train` or `reconstruct` (<out>/model).
        lpips_weights: local LPIPS (alex, v0.1) weights file, never downloaded; its format and
            how to build it: splatforge.metrics.LPIPS. Without it LPIPS is skipped.
        iteration: saved step to evaluate (default: the latest point_cloud/iteration_N).
        device: auto | cpu | cuda | cuda:N | mps.
    """
    from .eval import run_eval

    events = ConsoleEvents()
    try:
        rec = run_eval(model_dir, events, iteration=iteration, lpips_weights=lpips_weights,
                       device=device)
    finally:
        events.close()
    if rec["num_images"]:
        print(f"iteration {rec['iteration']}: {rec['num_images']} held-out views, PSNR "
              f"{rec['psnr']:.2f} dB, SSIM {rec['ssim']:.4f} -> {model_dir}/eval/metrics.csv")
    else:
        print("no held-out views in this dataset: nothing evaluated")
    if rec.get("lpips") is not None:
        print(f"LPIPS (alex): {rec['lpips']:.4f}")
    else:
        print(f"LPIPS: not computed: {rec['lpips_skipped']}")


def render(model_dir: tyro.conf.Positional[Path],
           output: Annotated[Path, tyro.conf.arg(aliases=["-o"], help="Video file to write "
                                                 "(.mp4).")],
           path: Literal["orbit", "train", "test"] = "orbit", frames: int | None = None,
           seconds: float | None = None, fps: float = 30.0, width: int | None = None,
           frames_between: int = 8, iteration: int | None = None,
           device: str = "auto") -> None:
    """Render a camera-path video (H.264 MP4) of a trained model.

    Args:
        model_dir: a model folder (<out>/model of `reconstruct`).
        path: orbit (a circle around the cameras' centre), train or test (the dataset's
            cameras in name order, interpolated).
        frames: number of frames (default: seconds x fps; train/test without --seconds:
            frames-between per pair of cameras; orbit: 8 s).
        seconds: video length when --frames is not given.
        frames_between: train/test paths: frames per pair of consecutive cameras.
        fps: frames per second.
        width: output width in pixels (default: the training images' width).
        iteration: saved step to render (default: the latest).
        device: auto | cpu | cuda | cuda:N | mps.
    """
    from .render import run_render

    events = ConsoleEvents()
    try:
        res = run_render(model_dir, output, path, frames=frames, seconds=seconds, fps=fps,
                         width=width, iteration=iteration, device=device,
                         frames_between=frames_between, events=events)
    finally:
        events.close()
    print(f"{res['frames']} frames, {res['width']}x{res['height']} at {res['fps']:g} fps "
          f"-> {res['output']} ({res['seconds']:.1f} s)")


class _ReconstructSfmConfig(SfmConfig):
    """Structure from motion with pycolmap (``--sfm-seed``: TrainConfig has ``--seed``)."""

    seed: Annotated[int, tyro.conf.arg(name="sfm-seed")] = SfmConfig.model_fields["seed"]


def reconstruct_config(preset: PresetName = DEFAULT_PRESET, force: bool = False,
                       lpips_weights: Path | None = None,
                       ingest: IngestConfig = IngestConfig(), sfm: SfmConfig = SfmConfig(),
                       scene: SceneConfig = SceneConfig(),
                       train: TrainConfig = TrainConfig()) -> ReconstructConfig:
    """The :class:`ReconstructConfig` of ``splatforge reconstruct``'s options: the stage
    fields given on the command line (:func:`given_on_command_line`) are the fields given."""
    stages = {"ingest": given_on_command_line(ingest, IngestConfig),
              "sfm": given_on_command_line(sfm, SfmConfig),
              "scene": given_on_command_line(scene, SceneConfig),
              "train": given_on_command_line(train, TrainConfig)}
    given: dict[str, object] = {k: v for k, v in stages.items() if v.model_fields_set}
    if force:
        given["force"] = True
    if lpips_weights is not None:
        given["eval"] = EvalConfig(lpips_weights=lpips_weights)
    return ReconstructConfig(preset=preset, **given)


def reconstruct(media: tyro.conf.Positional[Path], output: Output,
                preset: PresetName = DEFAULT_PRESET,
                force: bool = False, lpips_weights: Path | None = None,
                ingest: IngestConfig = IngestConfig(),
                sfm: _ReconstructSfmConfig = _ReconstructSfmConfig(),
                scene: SceneConfig = SceneConfig(), train: TrainConfig = TrainConfig(),
                viewer: ViewerOptions = ViewerOptions(),
                notify_url: str | None = None) -> None:
    """Photos, a zip, a video, a COLMAP folder or a transforms.json dataset in; a trained,
    evaluated and exported 3DGS scene out: ingest -> sfm -> train -> eval -> export.

    Writes <output>/workspace/ (ingest + SfM), <output>/model/ (INRIA model folder),
    <output>/scene.splat and .spz (when available) and <output>/reconstruct.json. Finished
    stages are skipped when run again (an interrupted training resumes from its checkpoint);
    --force redoes everything. The preset fills every option not given; options given on
    the command line win, also when given with their default value.

    Args:
        media: photos folder, .zip, video, COLMAP folder or transforms.json dataset.
        preset: preview (minutes on a CPU, small images), default (30000 steps, MCMC with a
            Gaussian budget), quality (more features, antialiased, 40000 steps).
        force: redo every stage.
        lpips_weights: local LPIPS weights for eval (never downloaded).
        notify_url: POST the final status (id, status, metrics, artifacts, error) here when
            the run ends, signed with $SPLATFORGE_NOTIFY_SECRET (default
            $SPLATFORGE_NOTIFY_URL).
    """
    import os

    from .jobs import CallbackSink
    from .pipeline import format_summary, run_job_pipeline
    from .train import TrainingInterrupted

    url = notify_url or os.environ.get("SPLATFORGE_NOTIFY_URL") or None
    events = ConsoleEvents()
    live = start_training_viewer(viewer)
    sink = CallbackSink(live.events(events) if live else events, "reconstruct")
    try:
        config = reconstruct_config(preset, force, lpips_weights, ingest, sfm, scene, train)
        res = run_job_pipeline(media, output, sink, config,
                               step_hook=live.step_hook if live else None)
    except TrainingInterrupted as e:
        events.close()
        _notify_cli(url, output, "cancelled", error=str(e))
        print(f"interrupted during training after step {e.step}; run the same command again "
              "to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        _notify_cli(url, output, "cancelled", error="interrupted")
        raise
    except Exception as e:
        _notify_cli(url, output, "failed", error=str(e))
        raise
    finally:
        events.close()
    _notify_cli(url, output, "succeeded", res=res)
    print(format_summary(res))
    finish_training_viewer(live, viewer)


def _notify_cli(url: str | None, output: Path, status: str, *, res: object = None,
                error: str | None = None) -> None:
    """The completion notification of ``splatforge reconstruct`` (see
    :mod:`splatforge.jobs.notify`); waits for delivery, bounded, since the process exits
    next."""
    import os

    from .jobs.notify import job_notice, notify_job_end, wait_for_notifications

    if not url:
        return
    metrics, artifacts = {}, []
    if res is not None:
        metrics = {k: getattr(res, k) for k in ("psnr", "ssim", "num_gaussians", "step")}
        out = Path(output).resolve()
        artifacts = [Path(p).resolve().relative_to(out).as_posix() for p in res.outputs]
    notify_job_end(url, job_notice(Path(output).name, status, metrics=metrics,
                                   artifacts=artifacts, error=error),
                   os.environ.get("SPLATFORGE_NOTIFY_SECRET"))
    wait_for_notifications(60.0)


from .service.cli import serve  # noqa: E402
from .aws.commands import aws_task, submit_job  # noqa: E402
from .service.celery_exec import worker  # noqa: E402
from .client.commands import client  # noqa: E402

COMMANDS = {"info": info, "ingest": ingest, "sfm": sfm, "train": train, "serve": serve,
            "convert": convert, "compress": compress,
            "eval": eval_cmd, "render": render, "reconstruct": reconstruct, "view": view,
            "aws-task": aws_task, "submit-job": submit_job,
            "worker": worker, "client": client}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``splatforge`` console script. Returns the exit status."""
    token = _ARGV.set(list(sys.argv[1:] if argv is None else argv))
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
    finally:
        _ARGV.reset(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
