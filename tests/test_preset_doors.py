"""Presets at every front door: an option the user gives wins over the preset, also when it
equals the model default (``--preset preview --strategy mcmc`` trains with MCMC), and every
door uses one default preset."""

from __future__ import annotations

import json

import pytest
from conftest import PLUSH_DOG
from service_helpers import Server, scene_with_source, wait_job


class _Captured(Exception):
    pass


def test_cli_options_given_win_over_the_preset(tmp_path, monkeypatch):
    """`--strategy mcmc` and `--sh-degree 3` are the model defaults; preview's strategy
    (`default`) and SH degree (1) fill only what was not given (max_steps here)."""
    import splatforge.train

    from splatforge.cli import main

    seen = {}

    def capture(cfg, *a, **k):
        seen["train"] = cfg
        seen["scene"] = k.get("scene_config")
        raise _Captured

    monkeypatch.setattr(splatforge.train, "run_train", capture)
    with pytest.raises(_Captured):
        main(["reconstruct", str(PLUSH_DOG), "-o", str(tmp_path / "o"), "--preset", "preview",
              "--strategy", "mcmc", "--sh-degree", "3", "--data-factor", "8",
              "--device", "cpu"])
    tr = seen["train"]
    assert tr.strategy == "mcmc" and tr.sh_degree == 3
    assert tr.max_steps == 300 and tr.densify_until_iter == 250  # from the preset
    assert seen["scene"].data_factor == 8


def test_one_default_preset_for_every_front_door():
    import inspect

    from splatforge.aws.task import PipelineSpec
    from splatforge.cli import reconstruct
    from splatforge.jobs.config import job_configs
    from splatforge.pipeline import run_reconstruct
    from splatforge.presets import DEFAULT_PRESET
    from splatforge.service.routes_jobs import JobRequest

    assert inspect.signature(reconstruct).parameters["preset"].default == DEFAULT_PRESET
    assert inspect.signature(run_reconstruct).parameters["preset"].default == DEFAULT_PRESET
    assert JobRequest().preset == DEFAULT_PRESET
    assert job_configs({})["preset"] == DEFAULT_PRESET
    assert PipelineSpec(None, None, None, None).preset == DEFAULT_PRESET


def test_job_body_options_given_win_over_the_preset(tmp_path):
    """Through a real server: the job body's `train.strategy: mcmc` and `sh_degree: 3`
    (model defaults) win over the preview preset in the trained model's config.json."""
    srv = Server(tmp_path / "svc", max_jobs=1).start()
    try:
        with srv.client() as c:
            sid = scene_with_source(c)
            body = {"preset": "preview", "scene": {"data_factor": 8},
                    "train": {"max_steps": 5, "device": "cpu", "strategy": "mcmc",
                              "sh_degree": 3}}
            job = wait_job(c, c.post(f"/scenes/{sid}/jobs", json=body).json()["job_id"])
            assert job["status"] == "succeeded", job
            cfg = json.loads(c.get(f"/scenes/{sid}/artifacts/config.json").content)
    finally:
        srv.stop()
    assert cfg["preset"] == "preview"
    assert cfg["train"]["strategy"] == "mcmc" and cfg["train"]["sh_degree"] == 3
    assert cfg["train"]["max_steps"] == 5
    assert cfg["sfm"]["max_num_features"] == 4096  # preview fills what was not given
