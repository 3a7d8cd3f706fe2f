"""Pretraining under ``torchrun``: which process this is, and the few collectives the loop
needs. Without torchrun (no ``WORLD_SIZE`` in the environment, or 1) everything here is
a no-op, so the loop is written once.

``torchrun --nproc-per-node N -m gjp pretrain …`` starts N copies of the same command;
each joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank), loads
its share of every epoch's batches (:class:`gjp.dataset.loader.LengthGroupedBatchSampler`
with ``rank``/``world``), and DDP averages the gradients, so an optimiser step sees N
batches — exactly what one process sees with ``--accumulate N`` over the same batches.
Only rank 0 writes (the run, its progress); the others wait for it at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gjp.errors import GjpError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: list[float], device) -> list[float]:
        """Each value summed over the processes (the same list back on every one)."""
        if not self.active:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def from_environment(device):
    """``(Distributed, device)``: joins the process group when torchrun started this
    process; on CUDA, each process takes the GPU of its local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Distributed(), device
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise GjpError(f"WORLD_SIZE={world} without a valid RANK: start multi-process runs with torchrun") from None
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    except (RuntimeError, ValueError) as err:
        raise GjpError(f"cannot join the torchrun process group ({str(err).splitlines()[0]})") from None
    return Distributed(rank, world, local_rank), device
