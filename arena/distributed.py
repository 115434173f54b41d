"""The process layout, the one gather, and batch norm over the global batch.

`processes()` is this program's layout (rank, world size, device, main process,
barrier), the same for the trainer, the metrics and the probes. `gather` is the one
collective that concatenates every process's rows: differentiable, for losses that
compare samples across the batch (DIM's negatives) and batch statistics, so that N
processes with B/N images each train the objective of one process with B images; and
with `ragged=True` for results whose row counts differ between processes (metric
samples). Networks use this module, so it imports accelerate only inside
`processes()`, where the launcher's environment becomes a process group; with no
process group, or one process, every collective here is the identity.

Gradient scaling. The trainer averages parameter gradients over processes (a mean,
arena.updates.average_gradients), and the objective it optimizes is the mean of the
processes' losses. A loss computed on gathered features depends on every process's
shard, so the gradient reaching shard r must collect every process's loss:

    d/d(shard_r) [1/N sum_q L_q]  ->  sum_q dL_q/d(shard_r)   (then / N by the mean)

which is what the backward of `gather` does (sum the gathered gradient over the
processes, keep this process's rows). When every process computes the same loss on
the gathered batch, L_q = L for all q, shard r's gradient is N dL/d(shard_r), and the
trainer's mean over processes gives exactly the one-process gradient of L.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass(frozen=True)
class Processes:
    """This program's processes: one, or those of `accelerate launch`."""

    rank: int
    world: int
    device: torch.device
    main: bool  # rank 0: writes files, prints, computes single-process metrics

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, x: Tensor) -> Tensor:
        """Every process's rows in rank order; row counts may differ (see `gather`)."""
        return gather(x, ragged=True)

    def gather_objects(self, obj) -> list:
        """Every process's picklable `obj` in rank order (small things: an error, a flag)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def processes() -> Processes:
    """The layout `accelerate launch` set up (a single process without it). The CPU is
    pinned by ACCELERATE_USE_CPU (`accelerate launch --cpu`, or by hand) where a GPU exists."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))
    return Processes(state.process_index, state.num_processes, state.device, state.is_main_process)


def shutdown() -> None:
    """End of a multi-process program: wait for every process, then tear the process
    group down (a gloo group left to the interpreter's exit can abort the process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int] | None) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = sizes or [x.shape[0]] * world
        most = max(sizes)
        padded = x.contiguous()
        if x.shape[0] < most:
            padded = torch.cat([padded, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.start, ctx.rows = sum(sizes[:rank]), x.shape[0]
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        # all_reduce works in place: never on autograd's own buffer. (A reduce-scatter
        # would move less data, but gloo has none; the features are small.)
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # sum over processes
        return grad[ctx.start : ctx.start + ctx.rows], None


def gather(x: Tensor, ragged: bool = False) -> Tensor:
    """Every process's `x` concatenated along dim 0 in rank order, differentiable (see
    the module docstring for the gradient). By default every process passes the same
    shape (the trainer's per-process batches are equal) and nothing waits for the host;
    `ragged=True` first exchanges the row counts (one small collective read on the host),
    so processes may pass different numbers of rows and no padding is returned."""
    if world_size() == 1:
        return x
    sizes = None
    if ragged:
        counts = gather(torch.tensor([x.shape[0]], device=x.device))
        sizes = counts.tolist()
    return _Gather.apply(x, sizes)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training-mode statistics are those of the global batch.

    Any device and backend (torch.nn.SyncBatchNorm runs on CUDA only, so it could not be
    tested here). In one process, or in eval mode, it is nn.BatchNorm exactly. With N
    processes each computes its per-channel count, mean and centred sum of squares in
    fp32, gathers them (one small collective, differentiable) and combines them with the
    parallel-variance formula
        mean = sum_r n_r m_r / n,   M2 = sum_r [M2_r + n_r (m_r - mean)^2],   var = M2 / n
    (biased for normalizing; unbiased M2 / (n - 1) for the running variance, as BatchNorm).
    `local = True` (local_batchnorm): this process's batch only, for a copy that one
    process trains alone (a probe), where a collective would wait for the others.
    """

    local = False

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects [B, C, ...] input, got {list(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.local or world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        count = xf.new_full((1,), x.numel() // c)
        mean = xf.mean(dims)
        m2 = (xf - mean.view(shape)).pow(2).sum(dims)
        stats = gather(torch.cat([count, mean, m2]).unsqueeze(0))  # [N, 1 + 2C]
        counts, means, m2s = stats[:, :1], stats[:, 1 : 1 + c], stats[:, 1 + c :]
        n = counts.sum()
        g_mean = (counts * means).sum(0) / n
        g_m2 = (m2s + counts * (means - g_mean).pow(2)).sum(0)
        var = g_m2 / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum None = cumulative average (BatchNorm's rule), kept on the device
                factor = 1.0 / self.num_batches_tracked.float() if self.momentum is None else self.momentum
                self.running_mean.lerp_(g_mean.to(self.running_mean.dtype), factor)
                unbiased = g_m2 / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = (xf - g_mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm layer replaced by a SyncBatchNorm holding the same
    parameters and running statistics (in place for children; returns the root)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, device=_device_of(module))
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        sync.requires_grad_(any(p.requires_grad for p in module.parameters()) if module.affine else False)
        return sync
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module


def local_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every SyncBatchNorm normalizing by this process's batch alone (in place)."""
    for m in module.modules():
        if isinstance(m, SyncBatchNorm):
            m.local = True
    return module


def _device_of(module: nn.Module):
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return None
