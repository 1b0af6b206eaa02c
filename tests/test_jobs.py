"""The job core (splatforge.jobs) on its own: the artifact manifest of a real trained model,
publish into a real local store (stale keys removed, rollback when an upload fails), the
input classifier, the sink protocol stopping the pipeline between stages, and the signed,
retried notification POST against a real HTTP listener on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from service_helpers import NotifyListener


def _fake_out(tmp_path):
    """A reconstruct output folder laid out like run_reconstruct's (the manifest only looks
    at names; the bytes do not matter here)."""
    out = tmp_path / "out"
    step = 30
    for rel in (f"model/point_cloud/iteration_{step}/point_cloud.ply",
                "model/point_cloud/iteration_10/point_cloud.ply", "model/ckpts/step_30.pt",
                "model/cameras.json", "model/cfg_args", "model/input.ply",
                "model/metrics.json", "model/config.json", "model/train_log.jsonl",
                "model/eval/metrics.csv", "model/eval/view_000.png", "scene.splat",
                "scene.spz", "reconstruct.json", "workspace/sparse/0/cameras.bin"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(rel.encode())
    return out, step


def test_manifest_and_publish(tmp_path):
    from splatforge.jobs import artifact_files, model_key, publish
    from splatforge.storage import LocalStore

    out, step = _fake_out(tmp_path)
    files = artifact_files(out, step)
    it = f"point_cloud/iteration_{step}/point_cloud.ply"
    assert files[it] == files["point_cloud.ply"]
    assert sorted(files) == sorted([
        it, "point_cloud.ply", "cameras.json", "cfg_args", "input.ply", "metrics.json",
        "config.json", "train_log.jsonl", "eval/metrics.csv", "renders/view_000.png",
        "scene.splat", "scene.spz", "reconstruct.json"])  # no ckpts, no earlier iteration
    with pytest.raises(FileNotFoundError, match="no final point cloud"):
        artifact_files(out, step + 1)

    store = LocalStore(tmp_path / "store")
    store.put_file("outputs/s/renders/old.png", out / "scene.splat")  # an earlier run's
    keys = publish(store, "outputs/s/", files)
    assert sorted(keys) == sorted(f"outputs/s/{n}" for n in files)
    assert sorted(o.key for o in store.list("outputs/s/")) == sorted(keys)  # stale gone
    assert model_key([k[len("outputs/s/"):] for k in keys]) == "point_cloud.ply"
    assert model_key(["cameras.json", "point_cloud/iteration_7/point_cloud.ply",
                      "point_cloud/iteration_30/point_cloud.ply"]) == \
        "point_cloud/iteration_30/point_cloud.ply"
    assert model_key(["scene.sog", "cameras.json"]) == "scene.sog"
    assert model_key(["cameras.json"]) is None

    # an upload that fails for good: this call's objects are deleted again, nothing mixed in
    class Failing(LocalStore):
        def put_file(self, key, path):
            if key.endswith("scene.splat"):
                raise OSError("disk full")
            super().put_file(key, path)

    bad = Failing(tmp_path / "store2")
    bad.workers = 1
    with pytest.raises(OSError, match="disk full"):
        publish(bad, "outputs/s/", files)
    assert bad.list("outputs/s/") == []


def test_classify_input(tmp_path):
    from splatforge.errors import InputError
    from splatforge.jobs import classify_input

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "clip.mov").write_bytes(b"x")
    k = classify_input(tmp_path / "v")
    assert (k.kind, k.path.name, k.is_dataset) == ("video", "clip.mov", False)
    with pytest.raises(InputError) as e:
        classify_input(tmp_path / "missing", "upload")
    assert str(e.value).startswith("upload: does not exist")
    assert str(tmp_path) not in str(e.value)


def test_sink_stops_the_pipeline_between_stages(tmp_path):
    """A sink whose should_stop answers a reason stops run_job_pipeline with JobStopped
    (no exception raised from its on_event)."""
    from conftest import PLUSH_DOG
    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.jobs import JobSink, JobStopped
    from splatforge.pipeline import run_job_pipeline
    from splatforge.reconstruct_config import ReconstructConfig

    class Sink:
        def __init__(self):
            self.events = []

        def on_event(self, ev):
            self.events.append(ev)

        def set_stage(self, stage):
            pass

        def should_stop(self):
            return "cancel"

    sink = Sink()
    assert isinstance(sink, JobSink)
    with pytest.raises(JobStopped) as e:
        run_job_pipeline(PLUSH_DOG, tmp_path / "o", sink, ReconstructConfig(
            scene=SceneConfig(data_factor=8), train=TrainConfig(max_steps=2)))
    assert e.value.reason == "cancel"
    assert not (tmp_path / "o" / "model").exists()  # stopped before training


def test_notification_signed_retried_and_never_raises():
    from splatforge.jobs.notify import job_notice, post_notice, verify_signature

    hook = NotifyListener(status=503)
    try:
        notice = job_notice("j1", "failed", metrics={"psnr": float("nan")}, error="boom")
        assert not post_notice(hook.url, notice, "k", attempts=3, backoff_s=0.01)
        assert len(hook.posts) == 3  # retried on 5xx
        hook.status = 200
        assert post_notice(hook.url, notice, "k", attempts=3, backoff_s=0.01)
        body, sig = hook.posts[-1]
        assert verify_signature(body, sig, "k") and not verify_signature(body, sig, "other")
        got = json.loads(body)
        assert got["id"] == "j1" and got["status"] == "failed" and got["error"] == "boom"
        assert got["metrics"]["psnr"] is None  # NaN sent as null, not dropped
        hook.status = 400
        n = len(hook.posts)
        assert not post_notice(hook.url, notice, "k", attempts=3, backoff_s=0.01)
        assert len(hook.posts) == n + 1  # a 4xx is not retried
    finally:
        hook.close()
    # unreachable / malformed: False, no exception
    assert not post_notice("http://127.0.0.1:9/x", notice, None, attempts=2, backoff_s=0.01)
    assert not post_notice("not a url", notice, None, attempts=2, backoff_s=0.01)
