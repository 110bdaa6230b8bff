"""The fast training path (`train.fast: true`): the plain step's code, arranged so a GPU stays busy.

What changes against the plain path, and why (the losses, the update order and the random draws are
the same: `Trainer.step` runs unchanged, and the draws come from the same seeded CPU generators):

- Data: both domains are moved to the device once as uint8 (2975 images at 143 px are 180 MB), and
  crop, flip and scaling to [-1, 1] run there (`pipeline.data.domains.materialize`). Per step the host only
  draws the batch's random choices and both pools' decisions (a few integers) and sends them in one
  (10, batch) int64 copy through a small ring of pinned buffers.
- Pools: on the device and vectorised (`ImagePool.apply`), fixed shapes, no `.item()`.
- No host synchronisation per step: losses are copied into a device buffer
  (`pipeline.cyclegan.curves.LossLog`) and read back every `log_every` steps, where the NaN/inf check
  names the step and the term.
- Fused Adam on CUDA; `channels_last` for the networks and images; `torch.compile` of the networks
  (not of the whole step, so the compiled code does not depend on the variant and one compile serves
  all five; static shapes).
- CUDA graphs (`train.cuda_graphs`): at batch 1 the step is launch-bound (thousands of small kernels),
  so after `WARMUP_STEPS` eager steps (which compile, autotune and allocate the optimiser state, on a
  side stream as graph capture requires) the whole step - data crop, G step, pools, D step, both Adam
  updates - is captured once into one graph and replayed. Its inputs are the static draws buffer; its
  outputs (the losses) are consumed by `LossLog.record` before the next replay, which is what the
  naive `mode="reduce-overhead"` attempt got wrong ("accessing tensor output of CUDAGraphs that has
  been overwritten"). The lr lives in device tensors the scheduler updates in place.

Checkpoints are those of the plain path: a run can stop on one path and resume on the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from pipeline.cyclegan.losses import LossDict
from pipeline.data.domains import BatchDraw, UnpairedSampler, materialize

WARMUP_STEPS = 3  # eager steps before capture: compile, cuDNN/cuBLAS set-up, Adam state
POOL_ROWS = ("X", "Y")
STAGING_SLOTS = 4  # pinned buffers in flight: the host may run this many steps ahead of the GPU


class _PinnedRing:
    """Pinned host buffers for the per-step draws, reused once the copy that read them has run."""

    def __init__(self, shape: tuple[int, ...], slots: int = STAGING_SLOTS):
        self.buffers = [torch.empty(shape, dtype=torch.long).pin_memory() for _ in range(slots)]
        self.events: list[torch.cuda.Event | None] = [None] * slots
        self.next = 0

    def upload(self, values: torch.Tensor, target: torch.Tensor) -> None:
        slot = self.next
        self.next = (slot + 1) % len(self.buffers)
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # only waits when the GPU is STAGING_SLOTS steps behind
        self.buffers[slot].copy_(values)
        target.copy_(self.buffers[slot], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[slot] = event


class FastSteps:
    """Runs `trainer.step` on device-resident data; optionally as one replayed CUDA graph."""

    def __init__(self, trainer, sampler: UnpairedSampler, warmup_steps: int = WARMUP_STEPS):
        self.trainer, self.sampler = trainer, sampler
        cfg, device = trainer.cfg, trainer.device
        self.device = device
        self.crop_size = sampler.crop_size
        self.photos = sampler.photos.to(device)
        self.labels = sampler.labels.to(device)
        self.local_batch = sampler.batch_size // trainer.world_size
        self.rows = (
            trainer.parallel.local_rows(self.local_batch)
            if trainer.parallel is not None
            else slice(0, sampler.batch_size)
        )
        self.channels_last = cfg.channels_last
        cuda = device.type == "cuda"
        if cuda:
            # Fixed shapes: let cuDNN time its algorithms once (the reference sets this too).
            torch.backends.cudnn.benchmark = True
        self.use_graphs = cfg.cuda_graphs and cuda and trainer.parallel is None
        self.warmup_steps = warmup_steps
        # Warm-up and capture on one side stream: per-stream library state (cuBLAS workspaces, handles)
        # is then set up before the capture, never during it.
        self.side_stream = torch.cuda.Stream() if self.use_graphs else None
        # The one input of a (captured) step: the batch's draws and both pools' decisions.
        self.draws = torch.zeros((8 + len(POOL_ROWS), sampler.batch_size), dtype=torch.long, device=device)
        self.staging = _PinnedRing(tuple(self.draws.shape)) if cuda else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_losses: LossDict | None = None
        self.eager_steps = 0
        self.timings: dict[str, float] = {}  # first step (compile), capture

    def next_draws(self) -> torch.Tensor:
        """The next step's random choices, packed (CPU); advances the sampler and the pools."""
        draw = self.sampler.next_draw().pack()
        pools = self.trainer.draw_pools(self.local_batch)
        zeros = torch.zeros(self.sampler.batch_size, dtype=torch.long)
        return torch.cat([draw, torch.stack([pools.get(name, zeros) for name in POOL_ROWS])])

    def step(self) -> LossDict:
        packed = self.next_draws()
        if self.staging is not None:
            self.staging.upload(packed, self.draws)
        else:
            self.draws.copy_(packed)
        if self.graph is None and self.use_graphs and self.eager_steps >= self.warmup_steps:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.graph_losses
        return self._eager()

    def _body(self, mark: Callable[[str], None] | None = None) -> LossDict:
        draw = BatchDraw.unpack(self.draws).rows(self.rows.start, self.rows.stop)
        real_A, real_B = materialize(draw, self.photos, self.labels, self.crop_size)
        if self.channels_last:
            real_A = real_A.contiguous(memory_format=torch.channels_last)
            real_B = real_B.contiguous(memory_format=torch.channels_last)
        if mark is not None:
            mark("data")
        pool_draws = {name: self.draws[8 + i] for i, name in enumerate(POOL_ROWS)}
        return self.trainer.step(real_A, real_B, pool_draws, mark)

    def timed_step(self, mark: Callable[[str], None]) -> LossDict:
        """One eager (never captured) step with `mark(phase)` after each phase: the benchmark's
        per-phase timings ("upload", "data", "G step", "pools", "D step")."""
        self.draws.copy_(self.next_draws())
        mark("upload")
        return self._body(mark)

    def _eager(self) -> LossDict:
        start = time.perf_counter()
        if self.use_graphs:
            # Warm-up for capture happens on a side stream (the pattern torch.cuda.graph documents).
            side = self.side_stream
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                losses = self._body()
            torch.cuda.current_stream().wait_stream(side)
        else:
            losses = self._body()
        if self.eager_steps == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.timings["first step (compile)"] = time.perf_counter() - start
        self.eager_steps += 1
        return losses

    def _capture(self) -> None:
        start = time.perf_counter()
        torch.cuda.synchronize()
        for optimizer in self.trainer.optimizers.values():
            optimizer.zero_grad(set_to_none=True)  # grads are then allocated in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.side_stream, capture_error_mode="thread_local"):
            losses = self._body()
        self.graph, self.graph_losses = graph, losses
        self.timings["capture"] = time.perf_counter() - start
