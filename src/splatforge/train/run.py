"""The training stage's entry point: :func:`run_train` trains on one device
(:class:`~splatforge.train.trainer.Trainer`) or, with ``TrainConfig.gpus > 1``, on several ranks
(:func:`splatforge.train.distributed.run_train_distributed`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import SceneConfig, TrainConfig
from ..events import EventCallback
from .distributed import run_train_distributed
from .trainer import StepHook, Trainer, TrainResult


def run_train(config: TrainConfig, scene: Any, model_dir: str | Path,
              events: EventCallback | None = None, scene_config: SceneConfig | None = None,
              resume: bool | str | Path | None = None,
              step_hook: StepHook | None = None,
              should_stop: Callable[[], bool] | None = None, *,
              score_held_out: bool = True) -> TrainResult:
    """Train a 3DGS scene into ``model_dir`` (see the module docstring for the recipe/layout).

    Args:
        config: :class:`~splatforge.config.TrainConfig` (``gpus > 1``: several ranks,
            :func:`splatforge.train.distributed.run_train_distributed`).
        scene: a dataset path (read with ``scene_config``) or a loaded
            :class:`~splatforge.scene.Scene`.
        model_dir: output folder (created).
        events: progress callback (stage ``train``): ``progress`` events "training" with
            step k of ``max_steps``, ETA, and on logged steps loss, l1, ssim, psnr (training
            view), num_gaussians, steps_per_second; ``info``/``warning`` events.
        scene_config: how the scene is read (``data_factor``, ``test_every``, ...) and
            ``min_points`` for random initialisation.
        resume: None/False = fresh run (an error when ``model_dir`` already has checkpoints);
            True = continue from the latest ``ckpts/step_N.pt`` in ``model_dir`` (fresh when
            there is none); a path = that checkpoint (or the latest in that folder).
        step_hook: ``step_hook(trainer, step)`` after every step (see :data:`StepHook`);
            the time it blocks is not counted as training time.
        should_stop: polled after every step; True stops training like Ctrl-C does (a
            checkpoint, then :class:`TrainingInterrupted`): a job's cancel or shutdown.
        score_held_out: score the held-out views at the end into ``metrics.json``'s
            ``test``; False when a later stage scores them (``reconstruct``'s eval stage, so
            that they are rendered and scored once), leaving ``test`` None.

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError: a device or backend that this machine lacks (``backend="gsplat"`` without
            CUDA), or a checkpoint made with an incompatible config.
        InputError: unreadable scene, images or checkpoint; checkpoints in ``model_dir``
            without ``resume``.
        TrainingInterrupted: (a ``KeyboardInterrupt``) Ctrl-C or a KeyboardInterrupt from
            ``events``; a checkpoint of the last completed step was written first.
    """
    if config.gpus > 1:  # one scene on several ranks (splatforge.train.distributed)
        return run_train_distributed(config, scene, model_dir, events, scene_config, resume,
                                     step_hook, should_stop, score_held_out=score_held_out)
    return Trainer(config, scene, model_dir, events, scene_config, step_hook,
                   should_stop, score_held_out=score_held_out).run(resume)
