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

Every front door parses its options into one
:class:`~splatforge.reconstruct_config.ReconstructConfig` and calls :func:`run_job_pipeline`
(or :func:`run_reconstruct`), which resolves the config once
(:func:`splatforge.presets.resolve_config`), classifies the input once
(:func:`splatforge.jobs.inputs.classify_input`) and runs the stages in order over one
:class:`Run` (the workspace, the :class:`~splatforge.export.model_dir.ModelDir`, the scene
loaded once, the result).

Stages are objects (:class:`IngestStage`, :class:`SfmStage`, :class:`TrainStage`,
:class:`EvalStage`, :class:`ExportStage`). Each says whether it applies to the input, whether
its outputs are current, runs at most once and writes only its own files. The rule: a stage
is skipped when its outputs are current and no stage before it ran in this run (ingest:
``ingest.json`` current for the media; sfm: ``sfm.json`` complete; train: the final
``point_cloud/iteration_<max_steps>`` and ``metrics.json`` at that step, trained with the same
options; eval: ``eval/metrics.csv`` for that iteration; export: every export file and
``config.json`` present). When a stage runs, every later stage runs again (training starts
afresh after a new SfM); an interrupted training run continues from its last checkpoint
(``run_train(resume=True)``). ``force`` redoes everything. A failing stage raises and leaves
the outputs of earlier runs in place (stages write to temporary files and rename).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np  # noqa: F401  (import-order guard: numpy before pycolmap, see NOTES.md)

from .config import TrainConfig
from .errors import ConfigError, InputError, StopRequested
from .events import EventCallback, StageReporter
from .export.model_dir import ModelDir
from .jobs.inputs import InputKind, classify_input, has_images
from .jobs.sink import JobSink, JobStopped
from .presets import preview_data_factor, resolve_config
from .reconstruct_config import ReconstructConfig
from .util import atomic_write_text

STAGES = ("ingest", "sfm", "train", "eval", "export")
SUMMARY_NAME = "reconstruct.json"

#: TrainConfig fields that do not change the result (a finished model trained with other
#: values of these is still current).
_TRAIN_COSMETIC = {"log_every", "eval_every", "image_cache_mb", "device", "backend",
                   "save_steps"}

#: ExportConfig field -> the web format it turns on or off.
_EXPORT_FORMATS = {"spz": ".spz", "sog": ".sog"}


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
        config: the resolved configuration (``config.json``: the
            :class:`~splatforge.reconstruct_config.ReconstructConfig` and the input).
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


# -- the run every stage works on ------------------------------------------------------------

@dataclass
class Run:
    """One reconstruct run: what its stages share.

    Attributes:
        config: the resolved config (its ``scene`` completed from the data before training).
        given: the input as the caller named it. input: its one classification; ``media`` is
            what ingest reads, ``dataset`` the posed dataset (None until SfM made one, unless
            the input is one).
        out: the output folder; ``workspace`` and ``model`` (the :class:`ModelDir`) in it.
        result: filled by the stages.
        upstream_ran: a stage before the current one ran in this run (or ``force``).
    """

    config: ReconstructConfig
    given: Path
    input: InputKind
    media: Path
    dataset: Path | None
    out: Path
    reporter: StageReporter
    events: EventCallback | None = None
    step_hook: Any = None
    should_stop: Callable[[], bool] | None = None
    result: ReconstructResult | None = None
    upstream_ran: bool = False
    plan: InputPlan | None = None
    _scene: Any = None

    @property
    def workspace(self) -> Path:
        return self.out / "workspace"

    @property
    def model(self) -> ModelDir:
        return ModelDir(self.out / "model")

    @property
    def kind(self) -> str:
        return self.result.input_kind

    def scene(self) -> Any:
        """The posed dataset read with ``config.scene``: loaded once per run."""
        if self._scene is None:
            from .scene import load_scene

            p = self.plan
            if p is not None and p.scene is not None and p.config.scene == self.config.scene:
                self._scene = p.scene  # checked by the front door before the job started
            else:
                self._scene = load_scene(self.result.dataset, self.config.scene, self.events)
        return self._scene


class Stage:
    """A pipeline stage over a :class:`Run`: it may not apply to the input, may be current
    (its outputs complete for this config), runs at most once and writes only its files."""

    name: ClassVar[str]

    def not_needed(self, run: Run) -> str | None:
        """Why the stage does not apply to this input (skipped even with ``force``)."""
        return None

    def prepare(self, run: Run) -> None:
        """What the stage needs before it can tell whether it is current."""

    def current(self, run: Run) -> str | None:
        """Why its outputs are current (then :meth:`read` takes them), or None."""
        return None

    def read(self, run: Run) -> None:
        """Take the result of current outputs into ``run.result``."""

    def run(self, run: Run) -> None:
        raise NotImplementedError


class IngestStage(Stage):
    """Media -> ``<workspace>/input`` + ``ingest.json``."""

    name = "ingest"

    def not_needed(self, run: Run) -> str | None:
        return f"input is a {run.kind} dataset" if run.dataset is not None else None

    def current(self, run: Run) -> str | None:
        from .sfm import ingest_is_current, load_state

        ws = run.workspace
        if ingest_is_current(load_state(ws / "ingest.json"), run.media, run.config.ingest, ws):
            return f"{ws / 'input'} is up to date"
        return None

    def run(self, run: Run) -> None:
        from .ingest import run_ingest

        run_ingest(run.config.ingest, run.media, run.workspace, run.events)


class SfmStage(Stage):
    """``<workspace>/input`` -> ``images/``, ``sparse/0/``, ``sfm.json``: the posed dataset."""

    name = "sfm"

    def not_needed(self, run: Run) -> str | None:
        return f"input is a {run.kind} dataset" if run.dataset is not None else None

    def current(self, run: Run) -> str | None:
        from .sfm import read_sfm_json

        self._done = read_sfm_json(run.workspace)
        return f"{run.workspace / 'sfm.json'} is complete" if self._done is not None else None

    def read(self, run: Run) -> None:
        self._record(run, self._done)

    def run(self, run: Run) -> None:
        from .sfm import run_sfm

        ws = run.workspace
        self._record(run, run_sfm(run.config.sfm, ws / "input", ws, run.events,
                                  ingest=run.config.ingest, force=run.upstream_ran))

    @staticmethod
    def _record(run: Run, sfm_res: Any) -> None:
        res = run.result
        res.num_images, res.num_registered = sfm_res.num_images, sfm_res.num_registered
        res.left_out = sfm_res.left_out


class TrainStage(Stage):
    """The posed dataset -> the model folder's PLYs, checkpoints, ``metrics.json`` and the
    INRIA companions (all the trainer's)."""

    name = "train"

    def prepare(self, run: Run) -> None:
        _settle_scene_config(run)
        sc = run.scene()
        if run.result.num_images is None:
            run.result.num_images = run.result.num_registered = len(sc.images)
        run.result.step = run.config.train.max_steps

    def current(self, run: Run) -> str | None:
        model, train = run.model, run.config.train
        if _train_is_current(model, train, run.config.scene.data_factor):
            return f"{model.root} holds step {train.max_steps}"
        return None

    def read(self, run: Run) -> None:
        run.result.num_gaussians = (run.model.read_metrics() or {}).get("num_gaussians")

    def run(self, run: Run) -> None:
        from .train import run_train

        root = run.model.root
        if run.upstream_ran and root.exists():
            shutil.rmtree(root)  # forced, or a model of an earlier SfM: stale
        tr = run_train(run.config.train, run.scene(), root, run.events,
                       scene_config=run.config.scene, resume=True, step_hook=run.step_hook,
                       should_stop=run.should_stop, score_held_out=False)  # EvalStage does
        run.result.num_gaussians = tr.num_gaussians


class EvalStage(Stage):
    """The final PLY on the held-out views -> ``eval/`` and ``metrics.json``'s ``eval`` (and
    its ``test``, which the trainer leaves to this stage: the views are scored once)."""

    name = "eval"

    def current(self, run: Run) -> str | None:
        files = run.model
        ev = (files.read_metrics() or {}).get("eval") or {}
        if (files.eval_dir / "metrics.csv").is_file() and ev.get("iteration") == run.result.step:
            return f"{files.eval_dir} is current"
        return None

    def read(self, run: Run) -> None:
        self._record(run, (run.model.read_metrics() or {})["eval"])

    def run(self, run: Run) -> None:
        from .eval import run_eval

        self._record(run, run_eval(run.model.root, run.events, iteration=run.result.step,
                                   lpips_weights=run.config.eval.lpips_weights,
                                   device=run.config.train.device, scene=run.scene(),
                                   masked=run.config.train.eval_masked))

    @staticmethod
    def _record(run: Run, ev: dict[str, Any]) -> None:
        run.result.psnr, run.result.ssim = ev.get("psnr"), ev.get("ssim")


class ExportStage(Stage):
    """``config.json`` in the model folder and the web formats next to it."""

    name = "export"

    @staticmethod
    def targets(run: Run) -> dict[str, Path]:
        off = {ext for key, ext in _EXPORT_FORMATS.items()
               if not getattr(run.config.export, key)}
        return {ext: run.out / f"scene{ext}" for ext in _export_writers() if ext not in off}

    def current(self, run: Run) -> str | None:
        if all(p.is_file() for p in self.targets(run).values()) and run.model.config.is_file():
            return "every export file exists"
        return None

    def run(self, run: Run) -> None:
        from .export import read_ply

        run.model.write_config(run.result.config)
        targets = self.targets(run)
        writers = _export_writers()
        if targets:
            splats = read_ply(run.model.point_cloud(run.result.step))
            for ext, path in targets.items():
                writers[ext](path, splats)
        missing = sorted({".splat", ".spz"} - set(writers))
        if missing:
            run.reporter.warning(f"export: no writer for {', '.join(missing)} in this "
                                 "version; skipped")


def _train_is_current(files: ModelDir, train: TrainConfig, data_factor: int) -> bool:
    """True when ``files`` holds a finished run of ``train`` at ``data_factor``: the final
    PLY, ``metrics.json`` at that step and the INRIA companions (``cameras.json``,
    ``cfg_args``, ``input.ply``), all written by the trainer.

    Raises:
        ConfigError: the finished model was trained with other (non-cosmetic) options.
    """
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
        raise ConfigError(f"{files.root} holds a finished model trained with other options "
                          "(" + ", ".join(sorted(k for k in new if old.get(k) != new[k]))
                          + "): run with --force to train again, or choose another -o folder")
    return (tc.get("scene") or {}).get("data_factor") == data_factor


def _settle_scene_config(run: Run) -> None:
    """Scene options resolved from the data, once the posed dataset exists: ``data_factor``
    from ``target_width``, the cache folder of a dataset input; then the config written with
    the model (``result.config``) is final."""
    cfg = run.config
    scene = cfg.scene
    if cfg.target_width is not None:
        w = _image_width(run.result.dataset)
        f = preview_data_factor(w, cfg.target_width) if w else 1
        scene = scene.model_copy(update={"data_factor": f})
        run.reporter.info(f"preset {cfg.preset}: data_factor {f} (images {w} px wide)")
    if scene.cache_dir is None and run.dataset is not None:
        scene = scene.model_copy(update={"cache_dir": (run.out / "cache").resolve()})
    run.config = cfg.model_copy(update={"scene": scene})
    run.result.config = {"input": str(run.media.resolve()),
                         **run.config.model_dump(mode="json", exclude={"force"})}


@dataclass
class InputPlan:
    """A job's input, classified once, with its config resolved once: what
    :func:`run_reconstruct` runs. A front door that must check the input before the job
    starts (the AWS worker's ``downloading`` stage) makes the plan itself with
    :func:`plan_input` and hands it on, so nothing is classified, resolved or loaded twice.

    Attributes:
        given: the input as the caller named it. label: how messages name it.
        input: its one classification. media: what ingest reads. dataset: the posed dataset
            (None when SfM makes one).
        config: the resolved config (:func:`splatforge.presets.resolve_config`).
        scene: the dataset as :meth:`load_scene` read it with ``config.scene`` (None until
            then); the run reuses it when its final scene options are the same.
    """

    given: Path
    label: str
    input: InputKind
    media: Path
    dataset: Path | None
    config: ReconstructConfig
    scene: Any = None

    def load_scene(self, events: EventCallback | None = None) -> Any:
        """Read the posed dataset now (to check it before the job starts); kept for the run.

        Returns:
            the :class:`splatforge.scene.Scene`.

        Raises:
            InputError: the input is no posed dataset, or the dataset does not read.
        """
        from .scene import load_scene

        if self.dataset is None:
            raise InputError(None, f"{self.label}: not a posed dataset")
        self.scene = load_scene(self.dataset, self.config.scene, events)
        return self.scene


def plan_input(media: str | Path, config: ReconstructConfig | None = None, *,
               label: str | None = None) -> InputPlan:
    """Resolve ``config`` and classify ``media``, once.

    With known poses (``sfm.pose_prior``) the prior's path is resolved inside the media, and a
    posed dataset's photos go through ingest and SfM (SfM triangulates with the poses).

    Args:
        media: photos folder, .zip, video, COLMAP folder or transforms.json dataset.
        config: the job's config as parsed (None = defaults).
        label: how messages name the input (an ``s3://`` origin; default its name).

    Raises:
        InputError: the input does not exist, is no supported media, or holds photos while
            SfM is disabled.
        ConfigError: an unknown preset or invalid values.
    """
    config = resolve_config(config or ReconstructConfig())
    given = Path(media)
    shown = label or str(given)
    inp = classify_input(given, label=shown)
    media, dataset = inp.path, (inp.path if inp.is_dataset else None)
    if dataset is None and not config.sfm_enabled:
        raise InputError(None, f"{shown}: holds photos or a video, but SfM is disabled: a "
                               "posed dataset (a COLMAP output, transforms.json) is needed")
    if config.sfm.pose_prior is not None:
        from .sfm import resolve_pose_prior

        sfm = config.sfm.model_copy(
            update={"pose_prior": resolve_pose_prior(config.sfm.pose_prior, given)})
        config = config.model_copy(update={"sfm": sfm})
        if dataset is not None:
            from .ingest import detect_media_kind

            imgs = given / "images"
            inp = InputKind(detect_media_kind(given), given)
            media = imgs if imgs.is_dir() and not has_images(given) else given
            dataset = None
    return InputPlan(given=given, label=shown, input=inp, media=media, dataset=dataset,
                     config=config)


def _stages(config: ReconstructConfig) -> list[Stage]:
    stages: list[Stage] = [IngestStage(), SfmStage()]
    if config.train_enabled:
        stages += [TrainStage(), EvalStage(), ExportStage()]
    return stages


def run_reconstruct(media: str | Path | InputPlan, output: str | Path,
                    config: ReconstructConfig | None = None, *,
                    events: EventCallback | None = None, step_hook: Any = None,
                    should_stop: Callable[[], bool] | None = None) -> ReconstructResult:
    """ingest -> sfm -> train -> eval -> export over ``output`` (see the module docstring).

    Args:
        media: photos folder, .zip, video, COLMAP folder or transforms.json dataset, or an
            :class:`InputPlan` of one (then ``config`` is the plan's).
        output: the output folder (created).
        config: the job's config as parsed (None = defaults); its preset fills the fields
            the user did not give (:func:`splatforge.presets.resolve_config`).
        events: progress callback; every stage reports under its own name, the pipeline as
            ``reconstruct``.
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
    if isinstance(media, InputPlan):
        if config is not None:
            raise ValueError("give the config to plan_input, not with its plan")
        plan = media
    else:
        plan = plan_input(media, config)
    cfg, inp, media, dataset, out = plan.config, plan.input, plan.media, plan.dataset, Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rep = StageReporter("reconstruct", events)
    run = Run(config=cfg, given=plan.given, input=inp, media=media, dataset=dataset, out=out,
              reporter=rep, events=events, step_hook=step_hook, should_stop=should_stop,
              upstream_ran=cfg.force, plan=plan)
    res = run.result = ReconstructResult(
        output=out, model_dir=run.model.root, dataset=dataset or run.workspace,
        input_kind=inp.kind, preset=cfg.preset)
    rep.started(f"{media} ({inp.kind}) -> {out}, preset {cfg.preset}", input_kind=inp.kind,
                preset=cfg.preset)
    for stage in _stages(cfg):
        t = time.monotonic()
        reason = stage.not_needed(run)
        if reason is None:
            if should_stop is not None and should_stop():
                raise StopRequested(f"stopped before {stage.name}")
            stage.prepare(run)
            reason = None if run.upstream_ran else stage.current(run)
            if reason is None:
                stage.run(run)
                run.upstream_ran = True
            else:
                stage.read(run)
        res.stages[stage.name] = {"status": "ran" if reason is None else "skipped",
                                  "seconds": round(time.monotonic() - t, 3),
                                  "reason": reason or ""}
        if reason is not None:
            rep.info(f"{stage.name}: skipped ({reason})", stage=stage.name)

    files = run.model
    paths = [*files.inria_files, files.config, files.metrics, files.eval_dir / "metrics.csv",
             *ExportStage.targets(run).values()]
    if res.step is not None:
        paths.insert(0, files.point_cloud(res.step))
    res.outputs = _sizes(paths) if cfg.train_enabled else {}
    atomic_write_text(out / SUMMARY_NAME, json.dumps(res.to_json(), indent=2) + "\n")
    rep.finished(f"{res.num_gaussians} Gaussians"
                 + (f", held-out PSNR {res.psnr:.2f} dB" if res.psnr is not None else ""),
                 stages=res.stages)
    return res


def run_job_pipeline(media: str | Path | InputPlan, out: str | Path, sink: JobSink,
                     config: ReconstructConfig | None = None, *,
                     step_hook: Any = None) -> ReconstructResult:
    """The one function every front door calls: :func:`run_reconstruct` of ``config``
    reporting to ``sink``.

    Args:
        media: the input path (classified here, once), or the :class:`InputPlan` a front
            door made of it with :func:`plan_input` (then ``config`` is None).
        out: the output folder.
        sink: a :class:`JobSink`.
        config: the job's :class:`~splatforge.reconstruct_config.ReconstructConfig` as
            parsed (None = defaults).
        step_hook: passed through (the live viewer's hook).

    Returns:
        :class:`splatforge.pipeline.ReconstructResult`.

    Raises:
        JobStopped: ``sink.should_stop()`` gave a reason (also when a Ctrl-C or an
            interrupt of the main thread arrived while a stop was pending).
        KeyboardInterrupt: Ctrl-C without a pending stop (the CLI's resume message).
        and whatever :func:`~splatforge.pipeline.run_reconstruct` raises.
    """
    try:
        return run_reconstruct(media, out, config, events=sink.on_event, step_hook=step_hook,
                               should_stop=lambda: sink.should_stop() is not None)
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
