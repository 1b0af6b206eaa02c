"""The training stage: ``run_train(config, scene, model_dir, events) -> TrainResult``.

Modules: :mod:`.run` (the entry point), :mod:`.trainer` (the loop), :mod:`.losses`, :mod:`.schedule` (learning rate, SH
degree), :mod:`.data` (image cache, view order), :mod:`.state` (the trainer's state, what a
checkpoint holds), :mod:`.checkpoint`, :mod:`.strategies` (densification, gsplat's strategy
internals), :mod:`.distributed`, :mod:`.evaluate`.
"""

from .checkpoint import (
    checkpoint_path,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .data import ImageCache, ViewSampler
from .evaluate import evaluate_splats, render_view
from .losses import mcmc_regularization, photometric_loss
from .schedule import expon_lr, sh_degree_at
from .state import TrainState, build_train_state
from .strategies import TrainStrategy, make_strategy
from .trainer import Trainer, TrainingInterrupted, TrainResult, resolve_backend, resolve_device
from .run import run_train

__all__ = [
    "ImageCache", "TrainResult", "TrainState", "TrainStrategy", "Trainer", "TrainingInterrupted",
    "ViewSampler", "build_train_state",
    "checkpoint_path", "evaluate_splats", "expon_lr", "find_latest_checkpoint",
    "list_checkpoints", "load_checkpoint", "make_strategy", "mcmc_regularization",
    "photometric_loss", "render_view", "resolve_backend", "resolve_device", "run_train",
    "save_checkpoint", "sh_degree_at",
]
