"""Training checkpoints: ``<model_dir>/ckpts/step_N.pt``.

A checkpoint holds everything a run needs to continue exactly as if it had not stopped: the
trainer's :class:`~splatforge.train.state.TrainState` as its
:meth:`~splatforge.train.state.TrainState.state_dict` gives it (and
:meth:`~splatforge.train.state.TrainState.load_state_dict` restores it), plus the run's config,
scene fingerprint and backend (:meth:`splatforge.train.trainer.Trainer.checkpoint_payload`):

* ``splats``: name -> raw parameter tensor (see :mod:`splatforge.splats`),
* ``optimizers``: name -> ``torch.optim`` state dict (Adam moments and step counts),
* ``strategy_state``: the gsplat strategy's running state (gradient accumulators, ...);
  ``strategy_counts`` / ``strategy_budget``: the strategy object's own state (refinement
  counters, the MCMC budget after pruning),
* ``extras``: appearance model and pose corrections with their optimisers, ``num_initial``,
* ``rng``: torch CPU and CUDA generator states, numpy's and Python's global generators,
* ``sampler`` / ``background_rng``: the trainer's own view-order and background generators,
* ``config`` (the :class:`~splatforge.config.TrainConfig` as JSON), ``step`` (steps done),
  ``train_seconds`` so far and a fingerprint of the scene.

Files are written atomically (temp file, then rename) and contain only tensors and plain
Python values, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..export.model_dir import ModelDir
from ..util import atomic_path

CHECKPOINT_VERSION = 1


def checkpoint_path(model_dir: str | Path, step: int) -> Path:
    """``<model_dir>/ckpts/step_<step>.pt`` (:meth:`ModelDir.checkpoint`)."""
    return ModelDir(model_dir).checkpoint(step)


def list_checkpoints(model_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``ckpts/step_N.pt`` in ``model_dir``, by step."""
    return ModelDir(model_dir).checkpoints()


def find_latest_checkpoint(model_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``model_dir``, or None."""
    found = list_checkpoints(model_dir)
    return found[-1][1] if found else None


def capture_rng_state() -> dict[str, Any]:
    """States of the global generators: torch CPU, every CUDA device, numpy, Python."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`capture_rng_state` (CUDA states only when devices exist)."""
    torch.set_rng_state(state["torch"])
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i], i)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (see the module docstring) to ``path`` atomically."""
    path = Path(path)
    payload = dict(payload, version=CHECKPOINT_VERSION)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        InputError: the file is missing, unreadable, or not a splatforge checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  (truncated, corrupt or foreign pickle: many types)
        raise InputError(path, f"cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or "splats" not in data or "step" not in data:
        raise InputError(path, "is not a splatforge training checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise InputError(path, f"checkpoint version {data.get('version')} is not supported "
                               f"(expected {CHECKPOINT_VERSION})")
    return data
