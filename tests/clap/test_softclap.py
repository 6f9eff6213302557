"""SoftCLAP targets: beta 0 is plain CLAP, beta > 0 equals the formula written out in numpy, gradients flow,
and across 2 real processes the gathered targets give one process's loss and gradients."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enclap.clap.loss import ClipLoss, softclap_targets

HERE = Path(__file__).resolve().parent


def softclap_reference(audio: np.ndarray, text: np.ndarray, captions: np.ndarray, scale: float, beta: float) -> float:
    """The docstring's formula with loops, float64: Y = (1-beta) I + beta * rownorm(max(cos(u_i, u_j), 0))."""
    a, t, u = (x.astype(np.float64) for x in (audio, text, captions))
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    n = len(a)
    y = np.zeros((n, n))
    for i in range(n):
        weights = [max(float(u[i] @ u[j]), 0.0) for j in range(n)]
        for j in range(n):
            y[i, j] = (1 - beta) * (i == j) + beta * weights[j] / sum(weights)
    logits = scale * a @ t.T

    def log_softmax_rows(m):
        shifted = m - m.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    audio_to_text = -np.sum(y * log_softmax_rows(logits)) / n
    text_to_audio = -np.sum(y * log_softmax_rows(logits.T)) / n
    return (audio_to_text + text_to_audio) / 2


def _batch(n=7, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    audio = F.normalize(torch.randn(n, d, generator=gen), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=gen), dim=-1)
    captions = torch.randn(n, 3, generator=gen)  # unnormalised on purpose: softclap_targets normalises
    return audio, text, captions


def test_beta_zero_is_plain_clap():
    audio, text, captions = _batch()
    targets = softclap_targets(captions, 0.0)
    assert torch.equal(targets[0], torch.eye(7)) and torch.equal(targets[1], torch.eye(7))
    scale = torch.tensor(6.0)
    assert float(ClipLoss()(audio, text, scale, targets=targets)) == pytest.approx(float(ClipLoss()(audio, text, scale)), rel=1e-6)


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_beta_positive_equals_the_formula(beta):
    audio, text, captions = _batch()
    loss = ClipLoss()(audio, text, torch.tensor(4.0), targets=softclap_targets(captions, beta))
    expected = softclap_reference(audio.numpy(), text.numpy(), captions.numpy(), 4.0, beta)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(loss) != pytest.approx(softclap_reference(audio.numpy(), text.numpy(), captions.numpy(), 4.0, 0.0), rel=1e-3)
    # rows are probabilities; local_loss in one process is the same matrix
    rows, _ = softclap_targets(captions, beta)
    torch.testing.assert_close(rows.sum(dim=1), torch.ones(7))
    assert (rows >= 0).all()
    assert torch.equal(softclap_targets(captions, beta, local_loss=True)[0], rows)


def test_gradients_flow_to_the_embeddings_not_to_the_targets():
    audio, text, captions = _batch()
    audio.requires_grad_(True)
    text.requires_grad_(True)
    captions.requires_grad_(True)
    scale = torch.tensor(3.0, requires_grad=True)
    loss = ClipLoss()(audio, text, scale, targets=softclap_targets(captions, 0.5))
    loss.backward()
    assert audio.grad.abs().sum() > 0 and text.grad.abs().sum() > 0 and scale.grad.abs() > 0
    assert captions.grad is None  # the targets are constants
    # the gradient is the one of the formula: check against autograd of a dense torch rewrite
    a2, t2 = audio.detach().clone().requires_grad_(True), text.detach().clone().requires_grad_(True)
    y = softclap_targets(captions.detach(), 0.5)[0]
    # ClipLoss scores cosine similarities: it normalises its inputs (so must the rewrite, for the gradient)
    logits = 3.0 * torch.nn.functional.normalize(a2, dim=-1) @ torch.nn.functional.normalize(t2, dim=-1).T
    dense = (-(y * logits.log_softmax(1)).sum() / 7 - (y * logits.T.log_softmax(1)).sum() / 7) / 2
    dense.backward()
    torch.testing.assert_close(audio.grad, a2.grad)
    torch.testing.assert_close(text.grad, t2.grad)


def test_bad_beta_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        softclap_targets(torch.randn(3, 2), 1.5)


def _one_process_reference(beta):
    sys.path.insert(0, str(HERE))
    try:
        from dist_loss_worker import PairEncoder, global_batch
    finally:
        sys.path.pop(0)
    model = PairEncoder()
    audio, text = global_batch(8)
    a, t, s = model(audio, text)
    loss = ClipLoss()(a, t, s, targets=softclap_targets(t, beta))
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("split,local_loss", [("5,3", "0"), ("4,4", "1")])
def test_two_processes_match_one_process(tmp_path, split, local_loss):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun is part of torch"
    out = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(29600 + os.getpid() % 1000),
         str(HERE / "dist_softclap_worker.py"), str(out), split, local_loss, "0.4"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(out, weights_only=True)
    loss, grads = _one_process_reference(0.4)
    if local_loss == "0":
        assert result["losses"].tolist() == pytest.approx([loss, loss], rel=1e-5)
    else:
        assert float(result["losses"].mean()) == pytest.approx(loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
