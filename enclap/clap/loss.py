"""Symmetric InfoNCE over the in-batch audio-text similarity matrix, with features gathered across processes.

For ``N`` (audio, caption) pairs with L2-normalised embeddings ``a_i``, ``t_j`` and scale ``s``
(exp of the learnable logit scale), the logits are ``s * a_i . t_j``; the loss is the mean of the
cross-entropy of each audio row against the captions (its own caption is the target) and of each
caption row against the audio clips (CLIP, LAION-CLAP, open_clip's ``ClipLoss``).

**Similarity** (``similarity``): ``"cosine"`` (default; the embeddings are L2-normalised here, a no-op for
the tower's already normalised ones) or ``"dot"``: the dot product of the embeddings as given (the DCASE
2023 retrieval baseline's ``dot_product``; with its L2-normalised outputs it equals the cosine).

**Across processes** (open_clip's ``gather_features``): every process embeds its part of the global
batch; the features of all processes are gathered so that every process's negatives count. With
``gather_with_grad=True`` (default) the gather is ``torch.distributed.nn.functional.all_gather``,
whose backward sums the gradients that every process's loss sends to a feature back to the process
that made it: the loop's DDP averaging of parameter gradients then yields exactly the gradient of the
global-batch loss (tests/clap/test_loss_distributed.py checks loss and gradients against one process
with the whole batch). ``gather_with_grad=False`` is open_clip's cheaper variant: gathered features of
other processes are constants and only the local slot keeps its gradient; each process's gradient then
misses what the other processes' losses say about its features (with ``local_loss=False`` the averaged
gradient is the exact one divided by the number of processes, a rescaling Adam nearly ignores; with
``local_loss=True`` it is an approximation, as in open_clip).

``local_loss=True``: each process scores only its own rows against all gathered columns (``local x
global`` logits instead of ``global x global``); the mean over processes equals the full loss when the
processes hold equally many pairs.

**Soft targets.** ``forward(..., targets=(audio_targets, text_targets))`` replaces the identity targets
by probability rows (``(rows, columns)`` each, rows summing to 1) for the audio->text and text->audio
cross-entropies, e.g. targets mixed from caption similarities (SoftCLAP). Default: the identity (each
row's own pair), computed as plain class-index cross-entropy.

**SoftCLAP** (Wang et al., 2023, "Unsupervised Improvement of Audio-Text Cross-Modal Representations",
arXiv:2305.01864; :func:`softclap_targets`): with caption embeddings ``u_i`` (L2-normalised, detached; from
the teacher's frozen text tower or the model's own) of the ``N`` pairs of the (gathered) batch, ``beta`` in
``[0, 1]``::

    S_ij = u_i . u_j                                  caption-caption cosine similarity
    P_ij = max(S_ij, 0) / sum_k max(S_ik, 0)           rows of a probability matrix (S_ii = 1, so sum >= 1)
    Y    = (1 - beta) * I + beta * P
    loss = 1/2 [ -1/N sum_i sum_j Y_ij log softmax_j(s a_i . t_j)      (audio -> text)
               + -1/N sum_j sum_i Y_ji log softmax_i(s t_j . a_i) ]   (text -> audio)

``Y`` serves both directions: row ``i`` is pair ``i``'s caption, and the columns of either cross-entropy
are indexed by pair (column ``j`` of audio->text is caption ``j``, of text->audio the clip paired with
caption ``j``). ``beta = 0`` is plain CLAP. The published code (zhepeiw/clap_curation, ``losses.SoftCLAPLoss``)
mixes ``(1 - beta) I + beta Z Z^T`` of teacher embeddings without normalising the rows and uses
``KLDivLoss(batchmean)``, which has the cross-entropy's gradient; here the similarity rows are made
probabilities first (clipped at 0, normalised), so ``beta`` is the soft part's share of every target row
whatever the batch size.

Per-process batches may differ in size (the last batch of an epoch): features are padded to the
largest, gathered, and the padding dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIMILARITIES = ("cosine", "dot")


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(
    features: torch.Tensor, *, gather_with_grad: bool = True
) -> tuple[torch.Tensor, int]:
    """All processes' ``features`` concatenated in rank order, and this process's row offset in them.

    In one process: ``(features, 0)``.
    """
    import torch.distributed as dist

    rank, world = _dist()
    if world == 1:
        return features, 0
    size = torch.tensor([features.shape[0]], device=features.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = F.pad(features, (0, 0, 0, longest - features.shape[0])) if features.shape[0] < longest else features
    if gather_with_grad:
        from torch.distributed.nn.functional import all_gather

        parts = list(all_gather(padded))
    else:
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach())
        parts[rank] = padded  # the local slot keeps its gradient
    gathered = torch.cat([part[:n] for part, n in zip(parts, sizes)])
    return gathered, sum(sizes[:rank])


def contrastive_logits(
    audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, *, local_loss: bool = False,
    gather_with_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits_per_audio, logits_per_text, labels)`` for this process's rows (all rows unless ``local_loss``)."""
    all_audio, offset = gather_features(audio, gather_with_grad=gather_with_grad)
    all_text, _ = gather_features(text, gather_with_grad=gather_with_grad)
    if local_loss:
        logits_audio = logit_scale * audio @ all_text.T
        logits_text = logit_scale * text @ all_audio.T
        labels = torch.arange(audio.shape[0], device=audio.device) + offset
    else:
        logits_audio = logit_scale * all_audio @ all_text.T
        logits_text = logits_audio.T
        labels = torch.arange(all_audio.shape[0], device=audio.device)
    return logits_audio, logits_text, labels


class ClipLoss(nn.Module):
    """Symmetric InfoNCE (see the module docstring). ``forward`` returns the scalar loss."""

    def __init__(self, *, local_loss: bool = False, gather_with_grad: bool = True, similarity: str = "cosine") -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
        self.local_loss = bool(local_loss)
        self.gather_with_grad = bool(gather_with_grad)
        self.similarity = similarity

    def forward(
        self,
        audio_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
        targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if audio_embeds.shape != text_embeds.shape:
            raise ValueError(f"audio and text embeddings must pair up, got {tuple(audio_embeds.shape)} and {tuple(text_embeds.shape)}")
        audio_embeds, text_embeds = audio_embeds.float(), text_embeds.float()
        if self.similarity == "cosine":
            audio_embeds, text_embeds = F.normalize(audio_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
        logits_audio, logits_text, labels = contrastive_logits(
            audio_embeds, text_embeds, logit_scale.float(),
            local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
        )
        if targets is None:
            target_audio = target_text = labels
        else:
            target_audio, target_text = targets
            for name, target, logits in (("audio", target_audio, logits_audio), ("text", target_text, logits_text)):
                if tuple(target.shape) != tuple(logits.shape):
                    raise ValueError(f"{name} targets have shape {tuple(target.shape)}, the logits {tuple(logits.shape)}")
        return (F.cross_entropy(logits_audio, target_audio) + F.cross_entropy(logits_text, target_text)) / 2

    def extra_repr(self) -> str:
        return f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, similarity={self.similarity}"


def softclap_targets(
    caption_embeds: torch.Tensor, beta: float, *, local_loss: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """SoftCLAP's ``(audio_targets, text_targets)`` for :class:`ClipLoss` (the formula is in the module docstring).

    ``caption_embeds``: this process's ``(rows, dim)`` caption embeddings (normalised here; detached: targets
    carry no gradient). Across processes they are gathered like the features, so the targets span the
    gathered columns; with ``local_loss`` only this process's rows are returned (its slice of ``Y``), else
    all rows. ``beta = 0`` gives the identity exactly.
    """
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"softclap beta must be in [0, 1], got {beta}")
    local = F.normalize(caption_embeds.detach().float(), dim=-1)
    everyone, offset = gather_features(local, gather_with_grad=False)
    rows = local if local_loss else everyone
    similarity = (rows @ everyone.T).clamp_min(0.0)
    soft = similarity / similarity.sum(dim=1, keepdim=True).clamp_min(1e-12)
    eye = torch.zeros_like(soft)
    first = offset if local_loss else 0
    eye[torch.arange(rows.shape[0]), torch.arange(rows.shape[0]) + first] = 1.0
    targets = (1.0 - float(beta)) * eye + float(beta) * soft
    return targets, targets


__all__ = ["SIMILARITIES", "ClipLoss", "contrastive_logits", "gather_features", "softclap_targets"]
