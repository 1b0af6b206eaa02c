"""Training images: a byte-budgeted decode cache and a resumable, seeded view order.

* :class:`ImageCache` decodes each image once (:func:`splatforge.scene.load_image`) and keeps
  the decoded uint8 arrays in host memory up to a byte budget, least recently used first out;
  images beyond the budget are decoded again on demand, with the next image of the order
  decoded in a background thread meanwhile. On CUDA, when every training image fits in a
  quarter of the free GPU memory, images are kept on the GPU as uint8 (converted to float per
  step) and never decoded twice.
* :class:`ViewSampler` draws training views epoch by epoch, each epoch a permutation from its
  own :class:`torch.Generator`; its state (generator, permutation, position) is saved in
  checkpoints so a resumed run sees the same views in the same order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..scene import load_image

if TYPE_CHECKING:
    from ..scene import Scene

#: Fraction of the free GPU memory that training images may take on CUDA.
GPU_IMAGE_FRACTION = 0.25


class ImageCache:
    """Decoded images of a scene as uint8 ``[H, W, 3]`` tensors on ``device``.

    Args:
        scene: the scene (images and background).
        indices: the image indices that will be requested (training views).
        budget_bytes: host memory for decoded images, in bytes (0 = decode every time).
        device: where :meth:`get` returns tensors.
        gpu_resident: keep images on the CUDA device; ``None`` = when they all fit in
            ``GPU_IMAGE_FRACTION`` of the free GPU memory.

    Attributes:
        decodes: number of image decodes so far (a measure of cache misses).
    """

    def __init__(self, scene: Scene, indices: list[int], budget_bytes: int,
                 device: torch.device, gpu_resident: bool | None = None):
        self.scene = scene
        self.indices = list(indices)
        self.budget = max(int(budget_bytes), 0)
        self.device = torch.device(device)
        self.decodes = 0
        self._host: OrderedDict[int, np.ndarray] = OrderedDict()
        self._host_bytes = 0
        self._gpu: dict[int, torch.Tensor] = {}
        self._pinned: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}
        total = sum(self.nbytes(i) for i in self.indices)
        self.total_bytes = total
        if gpu_resident is None:
            gpu_resident = False
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                gpu_resident = total <= GPU_IMAGE_FRACTION * free
        self.gpu_resident = bool(gpu_resident) and self.device.type == "cuda"

    def nbytes(self, index: int) -> int:
        """Bytes of the decoded image ``index`` (``W * H * 3``)."""
        im = self.scene.images[index]
        return int(im.width) * int(im.height) * 3

    @property
    def host_bytes(self) -> int:
        """Bytes of decoded images held in host memory now."""
        return self._host_bytes

    def _decode(self, index: int) -> np.ndarray:
        arr = load_image(self.scene.images[index], self.scene.background)
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
            arr = arr.copy()
        with self._lock:
            self.decodes += 1
        return arr

    def _host_get(self, index: int) -> np.ndarray:
        with self._lock:
            arr = self._host.get(index)
            if arr is not None:
                self._host.move_to_end(index)
                return arr
            fut = self._pending.pop(index, None)
        arr = fut.result() if fut is not None else self._decode(index)
        if arr.nbytes <= self.budget:
            with self._lock:
                if index not in self._host:
                    self._host[index] = arr
                    self._host_bytes += arr.nbytes
                while self._host_bytes > self.budget and self._host:
                    _, old = self._host.popitem(last=False)
                    self._host_bytes -= old.nbytes
        return arr

    def get(self, index: int) -> torch.Tensor:
        """``[H, W, 3]`` uint8 image ``index`` on the cache's device.

        Raises:
            InputError: the file cannot be decoded or has the wrong size.
        """
        if self.gpu_resident:
            t = self._gpu.get(index)
            if t is None:
                t = torch.from_numpy(self._decode(index)).to(self.device)
                self._gpu[index] = t
            return t
        if self.device.type == "cuda":
            # page-locked host copy (kept when every image fits the budget) + asynchronous
            # upload: no host-device sync per step; PyTorch's host allocator keeps a pinned
            # buffer alive until the copy that reads it has run
            t = self._pinned.get(index)
            if t is None:
                t = torch.from_numpy(self._host_get(index)).pin_memory()
                if self.total_bytes <= self.budget:
                    self._pinned[index] = t
            return t.to(self.device, non_blocking=True)
        arr = self._host_get(index)
        t = torch.from_numpy(arr)
        if self.device.type != "cpu":
            t = t.to(self.device)
        return t

    def prefetch(self, index: int) -> None:
        """Start decoding ``index`` in a background thread if it is not cached."""
        if self.gpu_resident:
            return  # decoded once on first use, then resident
        with self._lock:
            if index in self._host or index in self._pending:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="splatforge-decode")
            self._pending[index] = self._pool.submit(self._decode, index)

    def close(self) -> None:
        """Stop the prefetch thread and drop every cached image."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        self._host.clear()
        self._host_bytes = 0
        self._gpu.clear()
        self._pinned.clear()


class ViewSampler:
    """Seeded epoch-wise random order over ``indices``, resumable.

    Each epoch is ``torch.randperm(len(indices), generator=g)`` from a CPU generator seeded
    with ``seed``; :meth:`state_dict` captures the generator state, the current permutation and
    the position in it.
    """

    def __init__(self, indices: list[int], seed: int):
        if not indices:
            raise ValueError("no training views")
        self.indices = list(indices)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.perm: list[int] = []
        self.pos = 0
        self.epoch = 0

    def _new_epoch(self) -> None:
        order = torch.randperm(len(self.indices), generator=self.generator).tolist()
        self.perm = [self.indices[i] for i in order]
        self.pos = 0
        self.epoch += 1

    def next(self) -> int:
        """The next image index."""
        if self.pos >= len(self.perm):
            self._new_epoch()
        i = self.perm[self.pos]
        self.pos += 1
        return i

    def peek(self) -> int | None:
        """The index :meth:`next` will return, when it is known without drawing an epoch."""
        return self.perm[self.pos] if self.pos < len(self.perm) else None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": list(self.perm),
                "pos": self.pos, "epoch": self.epoch, "indices": list(self.indices)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ValueError: it was saved for a different set of training views.
        """
        if list(state["indices"]) != self.indices:
            raise ValueError("the checkpoint was trained on different training views")
        self.generator.set_state(state["generator"])
        self.perm = [int(i) for i in state["perm"]]
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])
