"""One scene on several ranks (splatforge.train.distributed, splatforge.raster.distributed):
2 gloo ranks on the CPU, real plush_dog images."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import socket

import pytest
import torch

from conftest import PLUSH_DOG

STEPS = 100


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raster_rank(rank: int, world: int, port: int, scene: dict, out: dict) -> None:
    """One rank of test_rasterize_distributed_matches_one_process."""
    import torch.distributed as dist

    from splatforge.raster.distributed import rasterize_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    try:
        n = scene["means"].shape[0]
        lo, hi = rank * n // world, (rank + 1) * n // world
        leaves = {k: scene[k][lo:hi].clone().requires_grad_(True)
                  for k in ("means", "quats", "scales", "opacities", "colors")}
        render, alphas, meta = rasterize_distributed(
            leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"],
            leaves["colors"], scene["viewmats"][rank:rank + 1], scene["Ks"][rank:rank + 1],
            scene["width"], scene["height"], sh_degree=1)
        meta["means2d"].retain_grad()
        (render * scene["weights"][rank:rank + 1]).sum().backward()
        out[rank] = {"render": render.detach(), "alphas": alphas.detach(),
                     "grads": {k: v.grad for k, v in leaves.items()},
                     "grad2d": meta["means2d"].grad, "received": meta["num_received"]}
    finally:
        dist.destroy_process_group()


def _raster_entry(rank, world, port, scene, q):
    out: dict = {}
    _raster_rank(rank, world, port, scene, out)
    q.put(pickle.dumps((rank, out[rank])))  # bytes: tensors outlive the rank's process


def test_rasterize_distributed_matches_one_process():
    """Two ranks, each with half of 400 Gaussians and one camera, render (and differentiate)
    exactly what one process renders with all Gaussians into both cameras."""
    from splatforge.raster import rasterize

    g = torch.Generator().manual_seed(3)
    n, W, H = 400, 40, 30
    scene = {
        "means": torch.randn(n, 3, generator=g) * 0.6 + torch.tensor([0.0, 0.0, 4.0]),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.rand(n, 3, generator=g) * 0.15 + 0.02,
        "opacities": torch.rand(n, generator=g) * 0.8 + 0.1,
        "colors": torch.randn(n, 4, 3, generator=g) * 0.5,
        "Ks": torch.tensor([[[30.0, 0, 20], [0, 30.0, 15], [0, 0, 1]]]).repeat(2, 1, 1),
        "width": W, "height": H,
    }
    vm = torch.eye(4).repeat(2, 1, 1)
    vm[1, 0, 3] = 0.4  # second camera shifted sideways
    scene["viewmats"] = vm
    scene["weights"] = torch.rand(2, H, W, 3, generator=g)
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_raster_entry, args=(r, 2, port, scene, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(pickle.loads(q.get(timeout=300)) for _ in range(2))
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)

    leaves = {k: scene[k].clone().requires_grad_(True)
              for k in ("means", "quats", "scales", "opacities", "colors")}
    render, alphas, meta = rasterize(leaves["means"], leaves["quats"], leaves["scales"],
                                     leaves["opacities"], leaves["colors"], vm, scene["Ks"],
                                     W, H, sh_degree=1, backend="torch")
    meta["means2d"].retain_grad()
    (render * scene["weights"]).sum().backward()
    assert render.abs().sum() > 1.0  # something was drawn in both views
    for r in range(2):
        torch.testing.assert_close(got[r]["render"][0], render[r].detach(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[r]["alphas"][0], alphas[r].detach(), atol=1e-5,
                                   rtol=1e-4)
    # each rank received pairs from both shards, and every Gaussian's gradient (summed over
    # the two images by the exchange's backward) matches the one-process gradient
    assert all(got[r]["received"] > 0 for r in range(2))
    for k, leaf in leaves.items():
        full = torch.cat([got[0]["grads"][k], got[1]["grads"][k]])
        torch.testing.assert_close(full, leaf.grad, atol=1e-4, rtol=1e-3)
    # the per-(camera, Gaussian) 2D gradient the strategies read, for each rank's shard
    grad2d = torch.cat([got[0]["grad2d"], got[1]["grad2d"]], dim=1)
    torch.testing.assert_close(grad2d, meta["means2d"].grad, atol=1e-4, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# Training plush_dog on 2 ranks
# --------------------------------------------------------------------------------------------

def _config(**kw):
    from splatforge.config import TrainConfig

    base = dict(max_steps=STEPS, save_steps=[STEPS], log_every=10, seed=0, device="cpu",
                strategy="mcmc", cap_max=4000, densify_from_iter=20,
                densification_interval=20, densify_until_iter=90)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, plush_scene, plush_scene_config):
    """plush_dog (data_factor 8) trained for STEPS steps by 1 and by 2 ranks, MCMC with
    relocation/growth every 20 steps up to 4000 Gaussians (2000 per rank)."""
    from splatforge.train import run_train

    out = {}
    for world in (2, 1):
        model = tmp_path_factory.mktemp(f"plush_w{world}")
        events: list = []
        with _rank_threads():
            res = run_train(_config(gpus=world), plush_scene, model, events.append,
                            scene_config=plush_scene_config)
        out[world] = (res, events)
    return out


@contextlib.contextmanager
def _rank_threads():
    """A one-rank run in this process gets a rank's share of the cores (each of 2 ranks
    uses half of them), as the 2-rank runs do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_two_ranks_match_one_rank(runs):
    (r2, ev2), (r1, ev1) = runs[2], runs[1]
    assert r2.step == r1.step == STEPS
    assert r2.metrics["world_size"] == 2
    p1, p2 = r1.metrics["test"]["psnr"], r2.metrics["test"]["psnr"]
    assert abs(p2 - p1) <= 0.5, (p1, p2)
    # per-rank budgets 2000 + 2000: grown beyond the 3122 SfM points, within the total budget
    assert 3122 < r2.num_gaussians <= 4000
    assert r2.metrics["num_gaussians"] == r2.num_gaussians
    # events from rank 0 only, as a single process sends them: one start, one finish, and
    # progress of every step 1..STEPS once
    kinds = [e.kind for e in ev2]
    assert kinds.count("stage_started") == 1 and kinds.count("stage_finished") == 1
    steps = [e.step for e in ev2 if e.kind == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    assert [e.kind for e in ev1].count("stage_started") == 1


def test_two_rank_outputs_are_single_process_outputs(runs):
    from splatforge.export.ply import read_ply
    from splatforge.train.checkpoint import load_checkpoint

    res = runs[2][0]
    ply = res.ply_paths[STEPS]
    splats = read_ply(ply)
    assert len(splats["means"]) == res.num_gaussians
    ck = load_checkpoint(res.checkpoints[STEPS])
    n = len(ck["splats"]["means"])
    assert n == res.num_gaussians
    assert ck["optimizers"]["means"]["state"][0]["exp_avg"].shape == (n, 3)
    assert ck["distributed"]["world_size"] == 2 and sum(ck["distributed"]["shard_sizes"]) == n
    log = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    steps = [r for r in log if "kind" not in r]
    assert [r["step"] for r in steps] == list(range(10, STEPS + 1, 10))
    assert steps[-1]["num_gaussians"] == n  # the whole model, not rank 0's shard
    assert [r["kind"] for r in log if "kind" in r] == ["eval"]
    assert not list(res.model_dir.glob("splatforge-rank*"))


@pytest.mark.parametrize("src,dst", [(2, 1), (1, 2)])
def test_checkpoint_resumes_on_other_world_size(runs, tmp_path, plush_scene,
                                                plush_scene_config, src, dst):
    """A checkpoint of `src` ranks resumes on `dst` ranks: same model (the zero-step part of
    the resume evaluates to the source's held-out PSNR), then trains on."""
    from splatforge.train import run_train

    res = runs[src][0]
    model = tmp_path / "resumed"
    (model / "ckpts").mkdir(parents=True)
    shutil.copy(res.checkpoints[STEPS], model / "ckpts" / f"step_{STEPS}.pt")
    with _rank_threads():
        same = run_train(_config(gpus=dst), plush_scene, model,
                         scene_config=plush_scene_config, resume=True)
    assert same.step == STEPS and same.num_gaussians == res.num_gaussians
    assert same.metrics["test"]["psnr"] == pytest.approx(res.metrics["test"]["psnr"], abs=1e-3)
    with _rank_threads():
        more = run_train(_config(gpus=dst, max_steps=STEPS + 5, save_steps=[STEPS + 5]),
                         plush_scene, model, scene_config=plush_scene_config, resume=True)
    assert more.step == STEPS + 5
    assert abs(more.metrics["test"]["psnr"] - res.metrics["test"]["psnr"]) < 0.5


def test_gpus_needs_one_process_for_a_step_hook(plush_scene, tmp_path):
    from splatforge.errors import ConfigError
    from splatforge.train import run_train

    with pytest.raises(ConfigError, match="step hook"):
        run_train(_config(gpus=2), plush_scene, tmp_path, step_hook=lambda t, k: None)
    assert PLUSH_DOG.is_dir()


def test_worker_gpus_gives_each_job_all_of_them(monkeypatch):
    """`splatforge worker --gpus 0,1` owns both devices and the runner trains each job on 2
    ranks unless the job says otherwise; bad lists are refused before anything starts."""
    from splatforge.errors import ConfigError
    from splatforge.service.celery_exec import worker
    from splatforge.jobs.config import job_config
    from splatforge.service.settings import ServiceSettings

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # restored afterwards
    for bad in ("", "0,0", "0,x", "-1"):
        with pytest.raises(ConfigError, match="--gpus"):
            worker(gpus=bad)
    with pytest.raises(ConfigError, match="--gpus"):
        worker(gpu=0, gpus="1,2")
    worker_gpus = 2
    assert job_config({"preset": "preview"}, worker_gpus).train.gpus == 2
    got = job_config({"preset": "preview", "train": {"max_steps": 7}}, worker_gpus).train
    assert (got.gpus, got.max_steps) == (2, 7)
    assert job_config({"train": {"gpus": 1}}, worker_gpus).train.gpus == 1
    assert "train" not in job_config({"preset": "preview"}).model_fields_set
    # the worker's --gpus reaches the runner through the service settings
    monkeypatch.setenv("SPLATFORGE_TRAIN_GPUS", "2")
    assert ServiceSettings.from_env().train_gpus == 2
    assert ServiceSettings().train_gpus == 1  # constructed directly: no environment read


def _rebalance_entry(rank, world, port, scene, scene_config, q):
    """One rank of test_rebalance_moves_gaussians_with_their_state."""
    import torch.distributed as dist
    from gsplat.strategy.ops import remove

    from splatforge.train.distributed import DistributedTrainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    try:
        import tempfile

        tr = DistributedTrainer(_config(gpus=2, strategy="default"), scene,
                                tempfile.mkdtemp(), None, scene_config)
        tr.setup(None)
        for name, opt in tr.optimizers.items():  # Adam moments that differ per Gaussian
            p = tr.params[name]
            p.grad = torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + rank
            opt.step()
        tr.strategy_state["grad2d"] = torch.rand(len(tr.params["means"]))
        if rank == 1:  # a prune on one shard only
            mask = torch.zeros(len(tr.params["means"]), dtype=torch.bool)
            mask[: len(mask) * 3 // 5] = True
            remove(tr.params, tr.optimizers, tr.strategy_state, mask)
        tr.sync()
        before = tr.gather_full(dst=None)
        sizes_before = list(tr.shard_sizes)
        moved = tr.rebalance()
        tr.sync()
        after = tr.gather_full(dst=None)
        q.put(pickle.dumps((rank, {"moved": moved, "before": before, "after": after,
                                   "sizes": (sizes_before, list(tr.shard_sizes))})))
    finally:
        dist.destroy_process_group()


def test_rebalance_moves_gaussians_with_their_state(plush_scene, plush_scene_config):
    """After one shard is pruned to 40%, the ranks redistribute the Gaussians evenly; the
    whole model (parameters, Adam moments, strategy state, in order) is unchanged."""
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_rebalance_entry,
                         args=(r, 2, port, plush_scene, plush_scene_config, q))
             for r in range(2)]
    for p in procs:
        p.start()
    got = dict(pickle.loads(q.get(timeout=600)) for _ in range(2))
    for p in procs:
        p.join(timeout=60)
    (before, after), r0 = got[0]["sizes"], got[0]
    assert r0["moved"] and got[1]["moved"]
    assert before[1] < 0.5 * before[0] and abs(after[0] - after[1]) <= 1
    assert sum(after) == sum(before)
    for key in ("params",):
        for k, v in r0["before"][key].items():
            assert torch.equal(r0["after"][key][k], v), k
    for k, st in r0["before"]["adam"].items():
        for m in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(r0["after"]["adam"][k][m], st[m]), (k, m)
    assert torch.equal(r0["after"]["strategy"]["grad2d"], r0["before"]["strategy"]["grad2d"])
