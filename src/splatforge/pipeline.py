"""``splatforge reconstruct``: media in, a trained, evaluated and exported scene out.

Stages, in order, over one output folder::

    <out>/workspace/        ingest + sfm: input/, ingest.json, images/, sparse/0/, sfm.json
    <out>/model/            the INRIA model folder: point_cloud/iteration_N/point_cloud.ply,
                            ckpts/, train_log.jsonl, train_config.json, metrics.json,
                            cameras.json, cfg_args, input.ply, config.json, eval/
    <out>/scene.splat       export (when splatforge.export.write_splat exists)
    <out>/scene.spz         export (SPZ v4)
    <out>/scene.sog         export (PlayCanvas SOG bundle)
    <out>/reconstruct.json  the summary: per-stage status and seconds, registered images,
                            Gaussians, held-out PSNR/SSIM, output files and sizes

Inputs: a folder of photos, a zip, a video (ingest + sfm run), or a posed dataset -- a COLMAP
folder, a ``transforms.json`` dataset or a splatforge workspace (detected with
:func:`splatforge.scene.detect_format`; ingest and sfm are skipped and the dataset is read in
place).

Resuming: each stage is skipped when its outputs are complete (ingest: ``ingest.json`` current
for the media; sfm: ``sfm.json`` complete; train: the final ``point_cloud/iteration_<max_steps>``
and ``metrics.json`` at that step; eval: ``eval/metrics.csv`` for that iteration; export: every
export file present). An interrupted training run continues from its last checkpoint
(``run_train(resume=True)``). When a stage runs, every later stage runs again (training starts
afresh after a new SfM). ``force=True`` redoes everything. A failing stage raises and leaves the
outputs of earlier runs in place (stages write to temporary files and rename).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np  # noqa: F401  (import-order guard: numpy before pycolmap, see NOTES.md)

from .config import IngestConfig, SceneConfig, SfmConfig, TrainConfig
from .errors import ConfigError, StopRequested
from .events import EventCallback, StageReporter
from .export.model_dir import ModelDir
from .jobs.sink import JobSink, JobStopped
from .presets import DEFAULT_PRESET, apply_preset, preview_data_factor
from .util import atomic_write_text

STAGES = ("ingest", "sfm", "train", "eval", "export")
SUMMARY_NAME = "reconstruct.json"

#: TrainConfig fields that do not change the result (a finished model trained with other
#: values of these is still current).
_TRAIN_COSMETIC = {"log_every", "eval_every", "image_cache_mb", "device", "backend",
                   "save_steps"}


@dataclass
class ReconstructResult:
    """What :func:`run_reconstruct` produced (also ``<out>/reconstruct.json``).

    Attributes:
        output: the output folder. model_dir: ``<out>/model``. dataset: the posed dataset
            trained on (``<out>/workspace`` or the input dataset).
        input_kind: ``images`` | ``zip`` | ``video`` | ``colmap`` | ``nerfstudio`` |
            ``blender``.
        stages: stage -> ``{"status": "ran" | "skipped", "seconds": float, "reason": str}``.
        num_images / num_registered: images given to / posed by SfM (the dataset's images
            when SfM was skipped).
        left_out: SfM's reason for every photo it could not pose (``sfm.json``'s
            ``left_out``).
        num_gaussians: Gaussians in the final model. step: its training step.
        psnr / ssim: held-out means (None without held-out views).
        outputs: file path -> size in bytes.
        config: the resolved configuration of every stage (``config.json``).
    """

    output: Path
    model_dir: Path
    dataset: Path
    input_kind: str
    preset: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_images: int | None = None
    num_registered: int | None = None
    left_out: list[dict[str, Any]] = field(default_factory=list)
    num_gaussians: int | None = None
    step: int | None = None
    psnr: float | None = None
    ssim: float | None = None
    outputs: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        d["view_command"] = view_command(self.model_dir)
        return d


def view_command(model_dir: Path) -> str:
    """How to look at the result in the built-in viewer (``splatforge view``)."""
    return f"splatforge view {model_dir}"


def _export_writers() -> dict[str, Any]:
    """``{".splat": write_splat, ".spz": write_spz, ".sog": write_sog}``: the web formats
    written next to the model (:data:`splatforge.export.SCENE_WRITERS`)."""
    from .export import SCENE_WRITERS

    return dict(SCENE_WRITERS)


def _image_width(dataset: Path) -> int | None:
    """Width in pixels of the dataset's (first camera's) full-resolution images, or None."""
    from .scene import detect_format
    from .scene.colmap import model_format, read_model
    from .scene.imageio import image_size

    try:
        fmt, root, desc = detect_format(dataset)
        if fmt == "colmap":
            model = read_model(desc, ext=model_format(desc), read_points2D=False)
            return max(int(c.width) for c in model.cameras.values())
        data = json.loads(Path(desc).read_text())
        if "w" in data:
            return int(data["w"])
        fr = data["frames"][0]
        if "w" in fr:
            return int(fr["w"])
        p = root / fr["file_path"]
        for cand in (p, p.with_suffix(".png"), Path(str(p) + ".png")):
            if cand.is_file():
                return image_size(cand)[0]
    except Exception:  # noqa: BLE001  (a best guess; the preset falls back to factor 1)
        return None
    return None


def _sizes(paths: list[Path]) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in paths if p.is_file()}


def _train_is_current(model_dir: Path, train: TrainConfig, scene: SceneConfig) -> bool:
    """True when ``model_dir`` holds a finished run of ``train`` on ``scene`` options: the
    final PLY, ``metrics.json`` at that step and the INRIA companions (``cameras.json``,
    ``cfg_args``, ``input.ply``), all written by the trainer.

    Raises:
        ConfigError: the finished model was trained with other (non-cosmetic) options.
    """
    files = ModelDir(model_dir)
    metrics = files.read_metrics()
    try:
        tc = json.loads(files.train_config.read_text())
    except (OSError, ValueError):
        return False
    if (metrics is None or not files.point_cloud(train.max_steps).is_file()
            or metrics.get("step") != train.max_steps
            or not all(p.is_file() for p in files.inria_files)):
        return False
    old = {k: v for k, v in (tc.get("train") or {}).items() if k not in _TRAIN_COSMETIC}
    new = {k: v for k, v in train.model_dump(mode="json").items() if k not in _TRAIN_COSMETIC}
    if old != new:
        raise ConfigError(f"{model_dir} holds a finished model trained with other options "
                          "(" + ", ".join(sorted(k for k in new if old.get(k) != new[k]))
                          + "): run with --force to train again, or choose another -o folder")
    return (tc.get("scene") or {}).get("data_factor") == scene.data_factor


def _eval_is_current(model_dir: Path, step: int) -> bool:
    files = ModelDir(model_dir)
    ev = (files.read_metrics() or {}).get("eval") or {}
    return (files.eval_dir / "metrics.csv").is_file() and ev.get("iteration") == step


def _source_splats(model_dir: Path, step: int, scene: Any) -> Any:
    """Splats of ``iteration_<step>`` in the source frame, as the export writers take them:
    what ``read_ply`` returns, else numpy arrays from the checkpoint."""
    try:
        from .export import read_ply  # type: ignore[attr-defined]
        return read_ply(ModelDir(model_dir).point_cloud(step))
    except ImportError:
        pass
    from .splats import splats_to_source_frame
    from .train.checkpoint import checkpoint_path, load_checkpoint

    ck = load_checkpoint(checkpoint_path(model_dir, step), map_location="cpu")
    return splats_to_source_frame(ck["splats"], scene)


def resolve_configs(preset: str, ingest: IngestConfig | None = None,
                    sfm: SfmConfig | None = None, scene: SceneConfig | None = None,
                    train: TrainConfig | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply ``preset`` to the fields the user did not give (not in a config's
    ``model_fields_set``; see :mod:`splatforge.presets`).

    Returns:
        ``(configs, deferred)``: stage -> config, and values resolved from the data later.
    """
    configs = {"ingest": ingest or IngestConfig(), "sfm": sfm or SfmConfig(),
               "scene": scene or SceneConfig(), "train": train or TrainConfig()}
    return apply_preset(preset, configs)


def run_reconstruct(media: str | Path, output: str | Path, *, preset: str = DEFAULT_PRESET,
                    ingest: IngestConfig | None = None, sfm: SfmConfig | None = None,
                    scene: SceneConfig | None = None, train: TrainConfig | None = None,
                    events: EventCallback | None = None, force: bool = False,
                    lpips_weights: str | Path | None = None,
                    step_hook: Any = None,
                    should_stop: Callable[[], bool] | None = None) -> ReconstructResult:
    """ingest -> sfm -> train -> eval -> export over ``output`` (see the module docstring).

    Args:
        media: photos folder, .zip, video, COLMAP folder or transforms.json dataset.
        output: the output folder (created).
        preset: ``preview`` | ``default`` | ``quality``; fills the config fields the user did
            not give.
        ingest, sfm, scene, train: stage configs (None = defaults); the fields in their
            ``model_fields_set`` win over the preset.
        events: progress callback; every stage reports under its own name, the pipeline as
            ``reconstruct``.
        force: redo every stage.
        lpips_weights: passed to :func:`splatforge.eval.run_eval`.
        step_hook: passed to :func:`splatforge.train.run_train` (the live viewer's hook).
        should_stop: polled before every stage and after every training step; True stops
            the run (:class:`~splatforge.errors.StopRequested` between stages,
            ``TrainingInterrupted`` with a checkpoint during training).

    Returns:
        :class:`ReconstructResult`, also written to ``<output>/reconstruct.json``.

    Raises:
        InputError: unusable media or dataset (naming the file); earlier outputs are kept.
        ConfigError: an unknown preset, invalid values, or a finished model trained with
            other options (without ``force``).
        SfmError: fewer than 3 images registered.
        TrainingInterrupted: Ctrl-C during training (a checkpoint was written; run again).
        StopRequested: ``should_stop`` returned True between stages.
    """
    from .eval import run_eval
    from .scene import load_scene
    from .train import run_train

    from .jobs.inputs import classify_input, has_images

    given = Path(media)
    out = Path(output)
    rep = StageReporter("reconstruct", events)
    configs, deferred = resolve_configs(preset, ingest, sfm, scene, train)
    inp = classify_input(given, label=str(given))
    kind, media = inp.kind, inp.path
    dataset = media if inp.is_dataset else None
    if configs["sfm"].pose_prior is not None:  # known poses: SfM triangulates with them
        from .sfm import resolve_pose_prior

        configs["sfm"] = configs["sfm"].model_copy(
            update={"pose_prior": resolve_pose_prior(configs["sfm"].pose_prior, given)})
        if dataset is not None:  # the dataset's photos go through ingest and SfM
            from .ingest import detect_media_kind

            imgs = given / "images"
            kind, dataset = detect_media_kind(given), None
            media = imgs if imgs.is_dir() and not has_images(given) else given
    out.mkdir(parents=True, exist_ok=True)
    ws = out / "workspace"
    model_dir = out / "model"
    files = ModelDir(model_dir)
    rep.started(f"{media} ({kind}) -> {out}, preset {preset}", input_kind=kind, preset=preset)
    res = ReconstructResult(output=out, model_dir=model_dir, dataset=ws, input_kind=kind,
                            preset=preset)
    upstream_ran = force

    def check_stop(stage: str) -> None:
        if should_stop is not None and should_stop():
            raise StopRequested(f"stopped before {stage}")

    def mark(stage: str, status: str, t0: float, reason: str = "") -> None:
        res.stages[stage] = {"status": status, "seconds": round(time.monotonic() - t0, 3),
                             "reason": reason}
        if status == "skipped":
            rep.info(f"{stage}: skipped ({reason})", stage=stage)

    # -- ingest + sfm ---------------------------------------------------------------------
    if dataset is not None:
        res.dataset = dataset
        t = time.monotonic()
        mark("ingest", "skipped", t, f"input is a {kind} dataset")
        mark("sfm", "skipped", t, f"input is a {kind} dataset")
    else:
        from .ingest import run_ingest
        from .sfm import ingest_is_current, load_state, read_sfm_json, run_sfm

        check_stop("ingest")
        t = time.monotonic()
        manifest = load_state(ws / "ingest.json")
        if not force and ingest_is_current(manifest, media, configs["ingest"], ws):
            mark("ingest", "skipped", t, f"{ws / 'input'} is up to date")
        else:
            run_ingest(configs["ingest"], media, ws, events)
            upstream_ran = True
            mark("ingest", "ran", t)
        check_stop("sfm")
        t = time.monotonic()
        done = read_sfm_json(ws)
        if done is not None and not upstream_ran:
            sfm_res = done
            mark("sfm", "skipped", t, f"{ws / 'sfm.json'} is complete")
        else:
            sfm_res = run_sfm(configs["sfm"], ws / "input", ws, events,
                              ingest=configs["ingest"], force=upstream_ran)
            upstream_ran = True
            mark("sfm", "ran", t)
        res.num_images, res.num_registered = sfm_res.num_images, sfm_res.num_registered
        res.left_out = sfm_res.left_out

    # -- scene options resolved from the data ---------------------------------------------
    scene_cfg: SceneConfig = configs["scene"]
    if deferred.get("scene.data_factor") == "auto":
        w = _image_width(res.dataset)
        f = preview_data_factor(w) if w else 1
        scene_cfg = scene_cfg.model_copy(update={"data_factor": f})
        rep.info(f"preset {preset}: data_factor {f} (images {w} px wide)")
    if scene_cfg.cache_dir is None and dataset is not None:
        scene_cfg = scene_cfg.model_copy(update={"cache_dir": (out / "cache").resolve()})
    configs["scene"] = scene_cfg
    train_cfg: TrainConfig = configs["train"]
    res.config = {"preset": preset, "input": str(media.resolve()),
                  **{k: v.model_dump(mode="json") for k, v in configs.items()}}

    # -- train ------------------------------------------------------------------------------
    check_stop("train")
    t = time.monotonic()
    if force and model_dir.exists():
        shutil.rmtree(model_dir)
    sc = load_scene(res.dataset, scene_cfg, events)
    if res.num_images is None:
        res.num_images = res.num_registered = len(sc.images)
    if not upstream_ran and _train_is_current(model_dir, train_cfg, scene_cfg):
        mark("train", "skipped", t, f"{model_dir} holds step {train_cfg.max_steps}")
        res.num_gaussians = (files.read_metrics() or {}).get("num_gaussians")
        train_ran = False
    else:
        if upstream_ran and model_dir.exists() and not force:
            shutil.rmtree(model_dir)  # a model of an earlier SfM is stale
        tr = run_train(train_cfg, sc, model_dir, events, scene_config=scene_cfg, resume=True,
                       step_hook=step_hook, should_stop=should_stop)
        res.num_gaussians = tr.num_gaussians
        train_ran = True
        mark("train", "ran", t)
    res.step = train_cfg.max_steps
    upstream_ran = upstream_ran or train_ran

    # -- eval -------------------------------------------------------------------------------
    check_stop("eval")
    t = time.monotonic()
    if not upstream_ran and _eval_is_current(model_dir, res.step):
        ev = (files.read_metrics() or {})["eval"]
        mark("eval", "skipped", t, f"{model_dir / 'eval'} is current")
    else:
        ev = run_eval(model_dir, events, iteration=res.step, lpips_weights=lpips_weights,
                      device=train_cfg.device)
        upstream_ran = True
        mark("eval", "ran", t)
    res.psnr, res.ssim = ev.get("psnr"), ev.get("ssim")

    # -- export -----------------------------------------------------------------------------
    check_stop("export")
    t = time.monotonic()
    writers = _export_writers()
    targets = {ext: out / f"scene{ext}" for ext in writers}
    if (not upstream_ran and all(p.is_file() for p in targets.values())
            and files.config.is_file()):
        mark("export", "skipped", t, "every export file exists")
    else:
        # cameras.json, cfg_args and input.ply are the trainer's (refined poses with
        # pose_opt); export adds config.json and the web formats
        files.write_config(res.config)
        if targets:
            splats = _source_splats(model_dir, res.step, sc)
            for ext, path in targets.items():
                writers[ext](path, splats)
        missing = sorted({".splat", ".spz"} - set(writers))
        if missing:
            rep.warning(f"export: no writer for {', '.join(missing)} in this version; "
                        "skipped")
        mark("export", "ran", t)

    res.outputs = _sizes([files.point_cloud(res.step), *files.inria_files, files.config,
                          files.metrics, files.eval_dir / "metrics.csv", *targets.values()])
    atomic_write_text(out / SUMMARY_NAME, json.dumps(res.to_json(), indent=2) + "\n")
    rep.finished(f"{res.num_gaussians} Gaussians"
                 + (f", held-out PSNR {res.psnr:.2f} dB" if res.psnr is not None else ""),
                 stages=res.stages)
    return res


def run_job_pipeline(media: str | Path, out: str | Path, sink: JobSink, *,
                     step_hook: Any = None, **configs: Any) -> Any:
    """``run_reconstruct(media, out, **configs)`` reporting to ``sink``.

    Args:
        media: the classified input path (:func:`splatforge.jobs.inputs.classify_input`).
        out: the output folder.
        sink: a :class:`JobSink`.
        step_hook: passed through (the live viewer's hook).
        **configs: ``preset``, ``ingest``, ``sfm``, ``scene``, ``train``, ``force``, ...

    Returns:
        :class:`splatforge.pipeline.ReconstructResult`.

    Raises:
        JobStopped: ``sink.should_stop()`` gave a reason (also when a Ctrl-C or an
            interrupt of the main thread arrived while a stop was pending).
        KeyboardInterrupt: Ctrl-C without a pending stop (the CLI's resume message).
        and whatever :func:`~splatforge.pipeline.run_reconstruct` raises.
    """
    try:
        return run_reconstruct(media, out, events=sink.on_event, step_hook=step_hook,
                               should_stop=lambda: sink.should_stop() is not None, **configs)
    except KeyboardInterrupt:
        reason = sink.should_stop()
        if reason is None:
            raise
        raise JobStopped(reason) from None


def format_summary(res: ReconstructResult) -> str:
    """The text ``splatforge reconstruct`` prints at the end."""
    lines = [f"reconstruct: {res.output} (preset {res.preset}, input {res.input_kind})"]
    total = 0.0
    for st in STAGES:
        s = res.stages.get(st)
        if s is None:
            continue
        total += s["seconds"]
        extra = f" ({s['reason']})" if s["status"] == "skipped" else ""
        lines.append(f"  {st:<7} {s['status']:<8} {s['seconds']:8.1f} s{extra}")
    lines.append(f"  total            {total:8.1f} s")
    if res.num_images is not None:
        lines.append(f"registered images: {res.num_registered}/{res.num_images}")
        for d in res.left_out:
            lines.append(f"  not posed: {d['image']}: {d['message']}")
    lines.append(f"Gaussians: {res.num_gaussians} (step {res.step})")
    if res.psnr is not None:
        lines.append(f"held-out PSNR {res.psnr:.2f} dB, SSIM {res.ssim:.4f} "
                     f"(LPIPS not computed: no weights given)")
    else:
        lines.append("no held-out views: no test metrics")
    lines.append("outputs:")
    for p, n in res.outputs.items():
        lines.append(f"  {p}  ({n / 1e6:.2f} MB)" if n >= 1e5 else f"  {p}  ({n} B)")
    lines.append(f"view: {view_command(res.model_dir)}  (in the browser; SuperSplat, "
                 "https://superspl.at/editor, also opens "
                 f"{ModelDir(res.model_dir).point_cloud(res.step)})")
    return "\n".join(lines)
