"""Run by tests/clap/test_loss.py under ``torchrun --nproc_per_node 2``: ClipLoss on each process's part of a batch.

Each process holds rows ``[start, stop)`` of one global batch of (audio, text) inputs, embeds them with a small
linear model wrapped in DDP (as the training loop prepares it), computes the gathered ClipLoss and backpropagates;
rank 0 saves the loss and DDP's averaged gradients for the test to compare with one process on the whole batch.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from enclap.clap.loss import ClipLoss
from enclap.training.distributed import end_process_group


class PairEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.audio = nn.Linear(6, 4)
        self.text = nn.Linear(5, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, audio, text):
        return F.normalize(self.audio(audio), dim=-1), F.normalize(self.text(text), dim=-1), self.logit_scale.exp()


def global_batch(n: int = 8):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=gen), torch.randn(n, 5, generator=gen)


def compare(out: str, split: str, local_loss: str) -> None:
    rank = dist.get_rank()
    cut = [int(x) for x in split.split(",")]
    bounds = [0, cut[0], cut[0] + cut[1]]
    audio, text = global_batch(bounds[-1])
    model = nn.parallel.DistributedDataParallel(PairEncoder())
    a, t, s = model(audio[bounds[rank] : bounds[rank + 1]], text[bounds[rank] : bounds[rank + 1]])
    loss = ClipLoss(local_loss=local_loss == "1")(a, t, s)
    loss.backward()
    losses = [torch.zeros(()) for _ in range(2)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save({"losses": torch.stack(losses), "grads": {n: p.grad.clone() for n, p in model.module.named_parameters()}}, out)


def main(out: str, split: str, local_loss: str) -> None:
    dist.init_process_group("gloo")
    compare(out, split, local_loss)
    end_process_group()  # as the training commands end: the DDP wrapper is gone by now (see its docstring)


if __name__ == "__main__":
    main(*sys.argv[1:4])
