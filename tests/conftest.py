"""Session fixtures shared by the test modules.

Training and SfM on CPU are slow, so the tests share a few runs made once per session
(``plush_dog`` at ``data_factor`` 8, 94x62 pixels, 3122 SfM points, trained; the shipped sample
reconstructed with the preview preset), with outputs under pytest's session temporary folder.
A test that changes a shared output works on a copy (``shutil.copytree`` into ``tmp_path``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: The shared datasets; ``SPLATFORGE_DATASETS`` points elsewhere (e.g. a copy on a GPU machine).
DATASETS = Path(os.environ.get("SPLATFORGE_DATASETS")
                or Path(__file__).resolve().parents[2] / "shared" / "datasets")
PLUSH_DOG = DATASETS / "plush_dog"
#: The shipped sample: 84 photos at 375x250.
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "plush_dog"

#: The session training run (see :func:`trained_plush`): steps, save steps and densification
#: schedule small enough for CI on 2 CPU cores.
SESSION_STEPS = 300
SESSION_SAVE_STEPS = [100, SESSION_STEPS]


@dataclass
class TrainedRun:
    """A finished training run and what was observed while it ran."""

    config: Any
    scene_config: Any
    scene: Any
    model_dir: Path
    result: Any
    events: list = field(default_factory=list)
    initial_train_psnr: float = 0.0
    eval_indices: list = field(default_factory=list)

    def log(self) -> list[dict]:
        lines = (self.model_dir / "train_log.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines if x.strip()]


@pytest.fixture(scope="session")
def plush_cache(tmp_path_factory) -> Path:
    """One image cache (data_factor 8 copies of plush_dog) for the whole session."""
    return tmp_path_factory.mktemp("plush_cache")


@pytest.fixture(scope="session")
def plush_scene_config(plush_cache):
    from splatforge.config import SceneConfig

    return SceneConfig(data_factor=8, cache_dir=plush_cache)


@pytest.fixture(scope="session")
def plush_scene(plush_scene_config):
    """plush_dog at data_factor 8 (94x62 pixels), normalised, 73 train / 11 test views.

    Used by trained_plush and, for short runs of their own, test_compress, test_distributed,
    test_mcmc_budget, test_train, test_train_levers, test_viewer and test_viewer_live."""
    from splatforge.scene import load_scene

    return load_scene(PLUSH_DOG, plush_scene_config)


@pytest.fixture(scope="session")
def trained_plush(tmp_path_factory, plush_scene, plush_scene_config) -> TrainedRun:
    """plush_dog trained once for SESSION_STEPS steps on CPU with the default strategy and a
    compressed schedule (refinement at steps 100, 150 and 200; SH degree 1 from step 100; no
    opacity reset, which would need more steps to recover than CI can afford), logging every
    10 steps; saves at SESSION_SAVE_STEPS. About 1.5 minutes on 2 idle cores.

    Used (read only; copied where a test changes it) by test_train, test_eval_render,
    test_compress, test_real_captures, test_train_speedups, test_viewer and
    test_viewer_browser."""
    from splatforge.config import TrainConfig
    from splatforge.splats import init_splats
    from splatforge.train import evaluate_splats, run_train

    cfg = TrainConfig(
        strategy="default", max_steps=SESSION_STEPS, save_steps=SESSION_SAVE_STEPS,
        sh_degree=1, sh_degree_interval=100, densify_from_iter=50, densification_interval=50,
        densify_until_iter=250, log_every=10, seed=0, device="cpu")
    scene = plush_scene
    eval_indices = scene.train_indices[::9]
    init = init_splats(scene, cfg.sh_degree)
    before = evaluate_splats(init.params, scene, eval_indices, 0, "torch")
    events: list = []
    model_dir = tmp_path_factory.mktemp("plush_model")
    result = run_train(cfg, scene, model_dir, events.append, scene_config=plush_scene_config)
    return TrainedRun(cfg, plush_scene_config, scene, model_dir, result, events,
                      before["psnr"], eval_indices)


#: The training options of :func:`sample_recon`: the preview preset with a shorter schedule for
#: CI (the README command uses the full preset). test_pipeline's ``CI_TRAIN`` must equal it.
SAMPLE_RECON_TRAIN = dict(max_steps=40, densify_from_iter=10, densification_interval=10,
                          densify_until_iter=30, sh_degree_interval=20, log_every=10,
                          device="cpu")


@pytest.fixture(scope="session")
def sample_recon(tmp_path_factory):
    """One preview reconstruction of the shipped sample (photos -> every stage), made once per
    session: ``(ReconstructResult, events, output folder)``. SfM runs with one thread (and
    the preview options, 800 px, 4096 features): pycolmap's multi-threaded mapper is not
    deterministic, one thread with a fixed seed is. Training: :data:`SAMPLE_RECON_TRAIN`
    at data_factor 4 (~100 px wide).

    Used by test_pipeline (its ``recon``: the stages, the model folder, resume, the CLI) and
    test_sfm_complete (its ``sample_runs``: this run's workspace is the third of the three
    preview-option SfM runs of the sample). Leave the folder as it is, except for what
    test_pipeline's resume tests rewrite (exports); copy it to change more."""
    from splatforge.config import SceneConfig, SfmConfig, TrainConfig
    from splatforge.pipeline import run_reconstruct
    from splatforge.reconstruct_config import ReconstructConfig

    out = tmp_path_factory.mktemp("recon") / "plush"
    events: list = []
    config = ReconstructConfig(preset="preview", train=TrainConfig(**SAMPLE_RECON_TRAIN),
                               scene=SceneConfig(data_factor=4), sfm=SfmConfig(num_threads=1))
    res = run_reconstruct(SAMPLE, out, config, events=events.append)
    return res, events, out
