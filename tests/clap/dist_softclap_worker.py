"""Run by tests/clap/test_softclap.py under ``torchrun --nproc_per_node 2``: SoftCLAP on each process's rows.

As dist_loss_worker.py, with the targets built by ``softclap_targets`` from the (gathered) text embeddings.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from dist_loss_worker import PairEncoder, global_batch
from enclap.clap.loss import ClipLoss, softclap_targets
from enclap.training.distributed import end_process_group


def compare(out: str, split: str, local_loss: str, beta: str) -> None:
    rank = dist.get_rank()
    cut = [int(x) for x in split.split(",")]
    bounds = [0, cut[0], cut[0] + cut[1]]
    audio, text = global_batch(bounds[-1])
    model = nn.parallel.DistributedDataParallel(PairEncoder())
    a, t, s = model(audio[bounds[rank] : bounds[rank + 1]], text[bounds[rank] : bounds[rank + 1]])
    local = local_loss == "1"
    loss = ClipLoss(local_loss=local)(a, t, s, targets=softclap_targets(t, float(beta), local_loss=local))
    loss.backward()
    losses = [torch.zeros(()) for _ in range(2)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save({"losses": torch.stack(losses), "grads": {n: p.grad.clone() for n, p in model.module.named_parameters()}}, out)


def main(out: str, split: str, local_loss: str, beta: str) -> None:
    dist.init_process_group("gloo")
    compare(out, split, local_loss, beta)
    end_process_group()  # as the training commands end: the DDP wrapper is gone by now (see its docstring)


if __name__ == "__main__":
    main(*sys.argv[1:5])
