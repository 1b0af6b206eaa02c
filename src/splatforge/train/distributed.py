"""One scene trained by several ranks: Gaussians and training views sharded (``gpus > 1``).

The scheme is Grendel's (Zhao et al. 2024, "On Scaling Up 3D Gaussian Splatting Training"),
as gsplat 1.5.3's distributed rasterization and gaussian-splatting-lightning's multi-GPU
strategy use it:

* rank ``r`` of ``W`` holds a contiguous shard of the Gaussians (parameters, Adam moments,
  per-Gaussian strategy state) and every ``W``-th training view (``train_indices[r::W]``);
* each step every rank draws one of its views; the ranks project their own shards into all
  ``W`` views, exchange the projected 2D Gaussians all-to-all and composite whole images of
  their own views (:func:`splatforge.raster.distributed.rasterize_distributed`); each rank's
  loss is its own image's, and the backward pass sends the 2D gradients back, so a Gaussian's
  gradient is the sum over the ``W`` images of the step (one step = ``W`` views, a batch);
* densification runs per rank on its own shard (gsplat's strategies unchanged; the MCMC budget
  ``cap_max`` is split evenly), and when the shard sizes drift apart by more than
  :data:`REBALANCE_RATIO` the ranks redistribute the Gaussians with their optimiser and
  strategy state (:meth:`DistributedTrainer.rebalance`);
* checkpoints, the PLY, ``train_log.jsonl``, ``metrics.json`` and the events are those of a
  single-process run, written by rank 0 after gathering the shards: a checkpoint of ``W``
  ranks resumes on any number of ranks, including one, and the other way round (an extra
  ``distributed`` entry keeps each rank's view sampler and random state, used when the world
  size is the same).

:func:`run_train_distributed` (what :func:`~splatforge.train.run_train` calls for
``gpus > 1``) starts the ranks with ``torch.multiprocessing`` (spawn) and the standard
``env://`` rendezvous on 127.0.0.1: NCCL with one CUDA device per rank (the visible devices,
``CUDA_VISIBLE_DEVICES``) and gsplat's distributed rasterization, or gloo with the PyTorch
rasterizer on CPU. Ranks other than 0 write into a scratch folder that is removed at the end.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_mod
import shutil
import socket
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..config import SceneConfig, TrainConfig
from ..errors import ConfigError, SplatforgeError
from ..events import EventCallback
from ..export.model_dir import ModelDir
from ..splats import PARAM_NAMES
from .checkpoint import capture_rng_state, restore_rng_state
from .data import ViewSampler
from .trainer import Trainer, TrainingInterrupted, TrainResult

#: Redistribute the Gaussians when the largest shard exceeds the mean by this factor.
REBALANCE_RATIO = 1.2

#: Adam moments with one row per Gaussian.
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def shard_sizes(total: int, world: int) -> list[int]:
    """Even contiguous split of ``total`` rows over ``world`` ranks (the first ranks get one
    more when it does not divide)."""
    return [total // world + (1 if r < total % world else 0) for r in range(world)]


class DistributedTrainer(Trainer):
    """A :class:`~splatforge.train.trainer.Trainer` for one rank of a process group (the
    group is initialised by the caller; see the module docstring), composed from the
    trainer's hook points: :meth:`check_setup`, :meth:`train_views` (every ``W``-th view),
    :meth:`after_setup` (cut the state into this rank's shard, seed the rank's streams),
    :meth:`render_train_view` (across ranks), :meth:`after_step` (exchange sizes,
    rebalance), :attr:`num_gaussians`, :meth:`full_params` / :meth:`checkpoint_payload`
    (gathered on rank 0), :meth:`share` and :meth:`sync_point`."""

    #: the ranks restore their own view order and background generator
    restore_streams = False

    def __init__(self, *args: Any, group: Any = None,
                 stop_requested: Callable[[], bool] | None = None, **kwargs: Any):
        """``Trainer``'s arguments; ``group``: the process group (None: the default one);
        ``stop_requested()``: polled each step on this rank; True on any rank stops every
        rank after the same step (:attr:`stop_everywhere`)."""
        super().__init__(*args, **kwargs)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.stream = self.rank
        self._total = 0
        self._stop = False
        self._stop_requested = stop_requested or (lambda: False)
        self._comm_device = torch.device("cpu")
        self.shard_sizes: list[int] = []
        self.rebalances = 0

    # ---- collectives over the shards --------------------------------------------------------
    def _per_gaussian_state(self) -> dict[str, torch.Tensor]:
        return self.strategy.per_gaussian_state(self.strategy_state, len(self.params["means"]))

    def _shard_state(self) -> dict[str, Any]:
        """This rank's per-Gaussian tensors on the CPU: parameters, Adam moments (and step),
        per-Gaussian strategy state."""
        out: dict[str, Any] = {"params": {k: v.detach().cpu() for k, v in self.params.items()},
                               "adam": {}, "strategy": {}}
        for name, opt in self.optimizers.items():
            st = opt.state.get(self.params[name], {})
            out["adam"][name] = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                                 for k, v in st.items()}
        out["strategy"] = {k: v.detach().cpu() for k, v in self._per_gaussian_state().items()}
        return out

    @staticmethod
    def _merge(shards: list[dict[str, Any]]) -> dict[str, Any]:
        """Concatenate the ranks' :meth:`_shard_state` in rank order."""
        params = {k: torch.cat([s["params"][k] for s in shards]) for k in PARAM_NAMES}
        adam: dict[str, dict[str, Any]] = {}
        for name in PARAM_NAMES:
            states = [s["adam"][name] for s in shards]
            if not all(ADAM_MOMENTS[0] in st for st in states):
                adam[name] = {}
                continue
            adam[name] = {k: v for k, v in states[0].items() if k not in ADAM_MOMENTS}
            for m in ADAM_MOMENTS:
                adam[name][m] = torch.cat([st[m] for st in states])
        strategy: dict[str, torch.Tensor] = {}
        keys = sorted({k for s in shards for k in s["strategy"]})
        for key in keys:
            have = [s["strategy"].get(key) for s in shards]
            like = next(v for v in have if v is not None)
            strategy[key] = torch.cat([
                v if v is not None else torch.zeros((len(s["params"]["means"]),
                                                     *like.shape[1:]), dtype=like.dtype)
                for v, s in zip(have, shards)])
        return {"params": params, "adam": adam, "strategy": strategy}

    def gather_full(self, dst: int | None = 0) -> dict[str, Any] | None:
        """The whole model (:meth:`_merge` of every shard) on rank ``dst`` (None = on every
        rank); other ranks get None. A collective."""
        mine = self._shard_state()
        if dst is None:
            every: list[Any] = [None] * self.world
            dist.all_gather_object(every, mine, group=self.group)
            return self._merge(every)
        got: list[Any] | None = [None] * self.world if self.rank == dst else None
        dist.gather_object(mine, got, dst=dst, group=self.group)
        return self._merge(got) if got is not None else None

    def _install(self, full: dict[str, Any], sizes: list[int]) -> None:
        """Make rows ``[sum(sizes[:rank]), sum(sizes[:rank+1]))`` of ``full`` this rank's
        shard (parameters, Adam state, per-Gaussian strategy state)."""
        lo = sum(sizes[:self.rank])
        hi = lo + sizes[self.rank]
        for name in PARAM_NAMES:
            p = torch.nn.Parameter(full["params"][name][lo:hi].to(self.device).contiguous())
            opt = self.optimizers[name]
            old = opt.param_groups[0]["params"][0]
            opt.state.pop(old, None)
            opt.param_groups[0]["params"] = [p]
            st = full["adam"].get(name) or {}
            if st:
                new = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                       for k, v in st.items() if k not in ADAM_MOMENTS}
                for m in ADAM_MOMENTS:
                    new[m] = st[m][lo:hi].to(self.device).contiguous()
                opt.state[p] = new
            self.params[name] = p
        for key, v in full["strategy"].items():
            self.strategy_state[key] = v[lo:hi].to(self.device).contiguous()
        self.shard_sizes = list(sizes)

    def sync(self) -> None:
        """One all-gather: shard sizes (-> :attr:`num_gaussians`) and whether a stop was
        requested on any rank. A collective."""
        mine = torch.tensor([len(self.params["means"]), int(bool(self._stop_requested()))],
                            dtype=torch.int64, device=self._comm_device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine, group=self.group)
        self.shard_sizes = [int(e[0]) for e in every]
        self._total = sum(self.shard_sizes)
        self._stop = any(int(e[1]) for e in every)

    def rebalance(self) -> bool:
        """Redistribute the Gaussians evenly when the largest shard exceeds the mean by
        :data:`REBALANCE_RATIO` (a collective; every rank decides the same from the sizes).

        Returns:
            True when the shards were redistributed.
        """
        mean = self._total / self.world
        if self._total == 0 or max(self.shard_sizes) <= REBALANCE_RATIO * mean:
            return False
        full = self.gather_full(dst=None)
        self._install(full, shard_sizes(self._total, self.world))
        self.rebalances += 1
        return True

    @property
    def num_gaussians(self) -> int:
        return self._total

    @property
    def stop_everywhere(self) -> bool:
        """Some rank's ``stop_requested()`` was True at the last :meth:`sync`."""
        return self._stop

    # ---- hook points -----------------------------------------------------------------------
    def check_setup(self) -> None:
        cfg = self.config
        self._comm_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        if cfg.absgrad:
            raise ConfigError("absgrad: not supported with gpus > 1 (the 2D gradients of a "
                              "Gaussian come from several ranks)")
        if self.session.use_sparse_grad:
            raise ConfigError("sparse_grad: not supported with gpus > 1")
        for name, on in (("appearance", cfg.appearance != "none"), ("pose_opt", cfg.pose_opt),
                         ("res_schedule", cfg.res_schedule),
                         ("selective_adam", cfg.selective_adam)):
            if on:
                raise ConfigError(f"{name}: not supported with gpus > 1 yet (the sharded "
                                  "renderer has no per-image corrections or schedule)")
        if self.backend == "gsplat" and cfg.strategy == "default":
            raise ConfigError("strategy 'default' with gpus > 1 on gsplat: gsplat's distributed "
                              "rasterization returns the 2D gradients per received Gaussian, "
                              "not per shard; use strategy 'mcmc' (the default)")
        scene = self.scene
        sizes = {(scene.images[i].width, scene.images[i].height) for i in scene.train_indices}
        if len(sizes) != 1:
            raise ConfigError(f"gpus > 1 needs training images of one size; this scene has "
                              f"{len(sizes)} sizes ({sorted(sizes)[:3]}...)")
        if len(scene.train_indices) < self.world:
            raise ConfigError(f"gpus: {self.world} ranks but only {len(scene.train_indices)} "
                              "training views")

    def train_views(self) -> list[int]:
        """This rank's views: every ``world``-th training view from ``rank``."""
        return list(self.scene.train_indices[self.rank::self.world])

    def after_setup(self, ckpt: dict[str, Any] | None) -> None:
        """Cut the whole model (built on every rank) into this rank's shard, split the MCMC
        budget, seed the rank's random streams (restore them from a checkpoint of the same
        world size)."""
        same = (ckpt is not None and (ckpt.get("distributed") or {}).get("world_size")
                == self.world)
        full = {"params": {k: v.detach().cpu() for k, v in self.params.items()},
                "adam": {name: dict(opt.state.get(self.params[name], {}))
                         for name, opt in self.optimizers.items()},
                "strategy": {k: v.cpu() for k, v in self._per_gaussian_state().items()}}
        n = len(self.params["means"])
        split = ckpt["distributed"]["shard_sizes"] if same else shard_sizes(n, self.world)
        self._install(full, list(split))
        del full
        self.strategy.split_budget(self.rank, self.world)
        torch.manual_seed(self.config.seed + 7919 * self.rank)
        if same:
            mine = ckpt["distributed"]["ranks"][self.rank]
            self.state.sampler.load_state_dict(mine["sampler"])
            self.state.bg_generator.set_state(mine["background_rng"])
            restore_rng_state(mine["rng"])
        self.sync()

    def render_train_view(self, idx, sh_degree, bg, viewmat, K, size):
        from ..raster.distributed import rasterize_distributed

        cfg = self.config
        im = self.scene.images[idx]
        p = self.params
        render, alphas, info = rasterize_distributed(
            p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]),
            torch.cat([p["sh0"], p["shN"]], dim=1), viewmat, K, im.width, im.height,
            sh_degree=sh_degree, rasterize_mode="antialiased" if cfg.antialiased else "classic",
            backend=self.backend, group=self.group)
        # background composited as splatforge.train.evaluate.render_view does
        render = render + (1.0 - alphas) * bg.reshape(1, 1, 1, 3)
        return render, alphas, info

    def after_step(self, step: int) -> None:
        self.sync()
        if self.rebalance():
            self.sync()

    def full_params(self) -> dict[str, torch.Tensor] | None:
        full = self.gather_full(dst=0)
        return full["params"] if full is not None else None

    def checkpoint_payload(self) -> dict[str, Any] | None:
        full = self.gather_full(dst=0)
        mine = {"sampler": self.state.sampler.state_dict(),
                "background_rng": self.state.bg_generator.get_state(),
                "rng": capture_rng_state()}
        ranks: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, ranks, dst=0, group=self.group)
        if self.rank != 0:
            return None
        payload = super().checkpoint_payload()
        payload["splats"] = full["params"]
        for name, sd in payload["optimizers"].items():
            st = full["adam"].get(name) or {}
            if st and sd["state"]:
                sd["state"][0].update({m: st[m] for m in ADAM_MOMENTS})
        for key, v in full["strategy"].items():
            payload["strategy_state"][key] = v
        # a single-process sampler over all views, so that one process can resume it
        payload["sampler"] = ViewSampler(self.scene.train_indices,
                                         self.config.seed).state_dict()
        payload["distributed"] = {"world_size": self.world,
                                  "shard_sizes": list(self.shard_sizes), "ranks": ranks}
        return payload

    def share(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def sync_point(self) -> None:
        dist.barrier(group=self.group)


# --------------------------------------------------------------------------------------------
# Launching the ranks
# --------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _portable(exc: BaseException, rank: int) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"rank {rank}: {type(exc).__name__}: {exc}")


def _send(q: Any, msg: tuple) -> None:
    """Put ``msg`` on the parent's queue as plain pickle bytes (torch's queue pickler would
    share tensors through file descriptors that die with the rank's process)."""
    q.put(pickle.dumps(msg))


def _rank_main(rank: int, world: int, port: int, args: dict[str, Any], q: Any, stop: Any
               ) -> None:
    """One rank: rendezvous (env://), train, report to the parent through ``q``."""
    os.setpgrp()  # Ctrl-C reaches the parent only; it stops every rank at the same step
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    cfg: TrainConfig = args["config"]
    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto"
                                                 and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    scratch = None
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world, timeout=timedelta(minutes=30))
        model_dir = Path(args["model_dir"])

        def send_event(ev):
            _send(q, ("event", ev))

        events = None
        if rank == 0:
            events = send_event
        else:
            scratch = Path(tempfile.mkdtemp(prefix=f"splatforge-rank{rank}-"))
            final = ModelDir(model_dir).point_cloud(cfg.max_steps)
            if final.is_file():   # mirror rank 0's "PLY already written" test
                (scratch / final.relative_to(model_dir)).parent.mkdir(parents=True)
                (scratch / final.relative_to(model_dir)).touch()
            model_dir = scratch
        def stop_hook(tr, step):
            if tr.stop_everywhere:
                raise KeyboardInterrupt

        trainer = DistributedTrainer(cfg, args["scene"], model_dir, events,
                                     args["scene_config"], stop_hook,
                                     stop_requested=stop.is_set,
                                     score_held_out=args["score_held_out"])
        try:
            result = trainer.run(args["resume"])
        except TrainingInterrupted as e:
            _send(q, ("interrupted", rank, e.step, e.checkpoint))
            return
        peaks: list[Any] = [None] * world   # peak device memory of each rank, bytes
        dist.all_gather_object(peaks, int(torch.cuda.max_memory_allocated())
                               if use_cuda else 0)
        if rank == 0:
            result.metrics["peak_memory_bytes_per_rank"] = peaks
            result.metrics["world_size"] = world
            result.metrics["rebalances"] = trainer.rebalances
            _send(q, ("result", rank, result))
        else:
            _send(q, ("done", rank))
    except BaseException as e:  # noqa: BLE001  (reported to the parent, which re-raises)
        _send(q, ("error", rank, _portable(e, rank), traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def run_train_distributed(config: TrainConfig, scene: Any, model_dir: str | Path,
                          events: EventCallback | None = None,
                          scene_config: SceneConfig | None = None,
                          resume: bool | str | Path | None = None,
                          step_hook: Any = None,
                          should_stop: Any = None, *,
                          score_held_out: bool = True) -> TrainResult:
    """:func:`~splatforge.train.run_train` over ``config.gpus`` ranks (see the module
    docstring); same arguments, outputs, events and errors. ``should_stop`` is polled by the
    parent between messages; True stops every rank after the same step.

    Ctrl-C (or a KeyboardInterrupt from ``events``) stops every rank after the same step; a
    checkpoint is written and :class:`TrainingInterrupted` raised as in a single process.

    Raises:
        ConfigError: ``step_hook`` given (the live viewer needs one process), an explicit
            ``cuda:N`` device, more ranks than visible CUDA devices, or what a rank raised.
        InputError, TrainingInterrupted: as :func:`~splatforge.train.run_train`.
    """
    world = int(config.gpus)
    if step_hook is not None:
        raise ConfigError("gpus > 1: a step hook (the live training viewer) needs one process; "
                          "train with gpus 1 to watch it live")
    if config.device.startswith("cuda:"):
        raise ConfigError(f"device: {config.device!r} with gpus {world}: choose the GPUs with "
                          "CUDA_VISIBLE_DEVICES (or splatforge worker --gpus) and device 'cuda'")
    use_cuda = config.device.startswith("cuda") or (config.device == "auto"
                                                    and torch.cuda.is_available())
    if use_cuda and torch.cuda.device_count() < world:
        raise ConfigError(f"gpus: {world} ranks but {torch.cuda.device_count()} CUDA device(s) "
                          "are visible")
    model_dir = Path(model_dir)
    probe = Trainer(config, scene, model_dir, events, scene_config)
    ckpt = probe.resolve_resume(resume)  # the same checkpoint for every rank
    args = {"config": config, "scene": scene, "model_dir": str(model_dir),
            "scene_config": scene_config, "resume": ckpt, "score_held_out": score_held_out}
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.Queue()
    stop = ctx.Event()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, args, q, stop), daemon=True,
                         name=f"splatforge-train-rank{r}") for r in range(world)]
    for p in procs:
        p.start()
    result: TrainResult | None = None
    interrupted: tuple[int, Path | None] | None = None
    finished: set[int] = set()
    try:
        while len(finished) < world:
            if should_stop is not None and not stop.is_set() and should_stop():
                stop.set()
            try:
                msg = pickle.loads(q.get(timeout=1.0))
            except queue_mod.Empty:
                dead = [i for i, p in enumerate(procs)
                        if i not in finished and not p.is_alive()]
                if dead and q.empty():
                    raise RuntimeError(f"training rank(s) {dead} exited (code "
                                       f"{procs[dead[0]].exitcode}) without a result")
                continue
            except KeyboardInterrupt:
                stop.set()
                continue
            kind = msg[0]
            if kind == "event":
                if events is not None:
                    try:
                        events(msg[1])
                    except KeyboardInterrupt:
                        stop.set()
                continue
            if kind == "error":
                _, rank, exc, tb = msg
                if not isinstance(exc, SplatforgeError):  # ours name the problem already
                    exc.add_note(f"in training rank {rank}:\n{tb}")
                raise exc
            finished.add(msg[1])
            if kind == "interrupted":
                interrupted = (msg[2], msg[3])
            elif kind == "result":
                result = msg[2]
    finally:
        for p in procs:
            p.join(timeout=30 if result is not None or interrupted else 1)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    if interrupted is not None:
        raise TrainingInterrupted(*interrupted)
    assert result is not None
    return result


__all__ = ["REBALANCE_RATIO", "DistributedTrainer",
           "run_train_distributed", "shard_sizes"]
