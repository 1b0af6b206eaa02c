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


def test_one_default_preset_for_every_front_door(monkeypatch):
    """Without a preset, every door's ReconstructConfig names DEFAULT_PRESET."""
    from splatforge.aws.task import TaskSettings, settings_spec
    from splatforge.jobs.config import job_config
    from splatforge.presets import DEFAULT_PRESET
    from splatforge.service.routes_jobs import JobRequest

    doors = _door_configs(monkeypatch, [], {}, {})
    assert {name: c.preset for name, c in doors.items()} == dict.fromkeys(doors, DEFAULT_PRESET)
    assert JobRequest().to_config().preset == DEFAULT_PRESET
    assert job_config({}).preset == DEFAULT_PRESET
    env = {"BUCKET": "bucket", "SCENE_ID": "s1"}
    assert settings_spec(TaskSettings.from_env(env)).preset == DEFAULT_PRESET


#: The toolbox job file used for the AWS door (training options mapped onto TrainConfig).
_JOB = {"uuid": "j1", "s3": {"bucketName": "bucket", "inputPrefix": "in", "inputKey": "v.mp4",
                             "outputPrefix": "out"}}


def _door_configs(monkeypatch, argv, body, job):
    """The ReconstructConfig each front door parses for the same options: the CLI (argv
    after ``reconstruct MEDIA -o OUT``), the HTTP body (through the stored job JSON that the
    worker reads back) and the AWS job file."""
    import splatforge.pipeline
    from splatforge.aws.job import parse_job
    from splatforge.cli import main
    from splatforge.jobs.config import job_config
    from splatforge.service.routes_jobs import JobRequest

    seen = {}

    def capture(media, out, sink, config=None, **kw):
        seen["cli"] = config
        raise _Captured

    monkeypatch.setattr(splatforge.pipeline, "run_job_pipeline", capture)
    with pytest.raises(_Captured):
        main(["reconstruct", str(PLUSH_DOG), "-o", "unused", *argv])
    req = JobRequest.model_validate(body)
    stored = json.loads(json.dumps(req.model_dump(mode="json", exclude_unset=True)))
    return {"cli": seen["cli"], "http": job_config(stored),
            "aws": parse_job({**_JOB, **job}).pipeline_spec()}


def test_every_front_door_parses_the_same_config(monkeypatch):
    """The same options through the CLI, the HTTP job body and the AWS job JSON give the same
    ReconstructConfig: the same values and the same fields given, so the preset fills the
    same ones."""
    from splatforge.presets import resolve_config

    doors = _door_configs(
        monkeypatch, ["--max-steps", "500", "--strategy", "mcmc", "--max-num-images", "40"],
        {"train": {"max_steps": 500, "strategy": "mcmc"}, "ingest": {"max_num_images": 40}},
        {"training": {"maxSteps": 500, "model": "mcmc"},
         "videoProcessing": {"maxNumImages": 40}})
    cli, http, aws = doors["cli"], doors["http"], doors["aws"]
    assert cli == http
    assert cli.given() == http.given()
    # the AWS job file maps its own keys (every ingest/sfm key it has is given)
    assert resolve_config(aws).train.max_steps == resolve_config(cli).train.max_steps == 500
    assert resolve_config(aws).train.strategy == resolve_config(cli).train.strategy == "mcmc"
    assert resolve_config(aws).ingest == resolve_config(cli).ingest
    for c in doors.values():
        assert {"max_steps", "strategy"} <= c.train.model_fields_set


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
