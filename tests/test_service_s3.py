"""The job service with S3 artifact storage on a moto server over real HTTP: media fetched
from an ``s3://`` source URI, artifacts uploaded to the bucket in the seeds' layout and served
back with HTTP Range (ranged S3 reads)."""

from __future__ import annotations

import boto3
import pytest

from conftest import PLUSH_DOG
from service_helpers import TINY_JOB, Server, new_scene, wait_job

BUCKET = "splatforge-service"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_job_with_s3_storage(tmp_path, moto_endpoint, monkeypatch):
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    # the dataset as a client would have put it in a bucket of its own
    for sub in ("sparse/0", "images_4"):
        for p in sorted((PLUSH_DOG / sub).iterdir()):
            s3.upload_file(str(p), BUCKET, f"incoming/plush/{sub}/{p.name}")
    srv = Server(tmp_path / "s3svc", max_jobs=1, storage=f"s3://{BUCKET}/svc",
                 extra_env={**creds, "SPLATFORGE_S3_ENDPOINT_URL": moto_endpoint}).start()
    try:
        with srv.client() as c:
            sid = new_scene(c, "from s3")
            r = c.post(f"/scenes/{sid}/media",
                       data={"source_uri": f"s3://{BUCKET}/incoming/plush"})
            assert r.status_code == 200, r.text
            # an uploaded image lands in the bucket under media/{id}/
            img = next((PLUSH_DOG / "images_4").iterdir())
            sid2 = new_scene(c, "upload")
            r = c.post(f"/scenes/{sid2}/media",
                       files=[("files", (img.name, img.read_bytes(), "image/jpeg"))])
            assert r.status_code == 200, r.text
            head = s3.head_object(Bucket=BUCKET, Key=f"svc/media/{sid2}/{img.name}")
            assert head["ContentLength"] == img.stat().st_size

            job_id = c.post(f"/scenes/{sid}/jobs", json=TINY_JOB).json()["job_id"]
            job = wait_job(c, job_id, timeout=180)
            assert job["status"] == "succeeded", (job,
                                                  c.get(f"/jobs/{job_id}/log").text[-3000:])
            keys = {o["Key"] for o in s3.list_objects_v2(
                Bucket=BUCKET, Prefix=f"svc/outputs/{sid}/")["Contents"]}
            for n in ("point_cloud.ply", "cameras.json", "metrics.json", "scene.splat",
                      "scene.spz", "reconstruct.json"):
                assert f"svc/outputs/{sid}/{n}" in keys
            assert not (tmp_path / "s3svc" / "artifacts").exists()  # nothing stored locally
            listing = {a["name"]: a
                       for a in c.get(f"/scenes/{sid}/artifacts").json()["artifacts"]}
            ply = s3.get_object(Bucket=BUCKET,
                                Key=f"svc/outputs/{sid}/point_cloud.ply")["Body"].read()
            assert listing["point_cloud.ply"]["size"] == len(ply)
            full = c.get(f"/scenes/{sid}/artifacts/point_cloud.ply")
            assert full.status_code == 200 and full.content == ply
            assert full.headers["content-length"] == str(len(ply))
            r = c.get(f"/scenes/{sid}/artifacts/point_cloud.ply",
                      headers={"Range": "bytes=1000-5999"})
            assert r.status_code == 206 and r.content == ply[1000:6000]
            assert r.headers["content-range"] == f"bytes 1000-5999/{len(ply)}"
            r = c.get(f"/scenes/{sid}/artifacts/point_cloud.ply", headers={"Range": "bytes=-10"})
            assert r.status_code == 206 and r.content == ply[-10:]
            assert c.get(f"/scenes/{sid}/artifacts/point_cloud.ply",
                         headers={"Range": f"bytes={len(ply)}-"}).status_code == 416
            model = c.get(f"/scene/{sid}/gsplat/model")
            assert model.status_code == 200 and model.content == ply
    finally:
        srv.stop()
