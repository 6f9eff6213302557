"""ClipLoss: equal to symmetric cross-entropy written out by hand; across 2 real processes equal to 1 process."""

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

from enclap.clap.loss import ClipLoss

HERE = Path(__file__).resolve().parent


def symmetric_cross_entropy(audio: np.ndarray, text: np.ndarray, scale: float) -> float:
    """log-softmax over rows and over columns of scale * A T^T, the diagonal as targets (numpy, float64)."""
    logits = scale * audio.astype(np.float64) @ text.astype(np.float64).T

    def mean_nll(m: np.ndarray) -> float:
        shifted = m - m.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-np.mean(np.diag(log_p)))

    return (mean_nll(logits) + mean_nll(logits.T)) / 2


def _embeddings(n: int = 6, d: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=gen), dim=-1), F.normalize(torch.randn(n, d, generator=gen), dim=-1)


def test_equals_direct_computation():
    audio, text = _embeddings()
    loss = ClipLoss()(audio, text, torch.tensor(7.5))
    assert float(loss) == pytest.approx(symmetric_cross_entropy(audio.numpy(), text.numpy(), 7.5), rel=1e-6)


def test_local_loss_in_one_process_is_the_full_loss():
    audio, text = _embeddings()
    scale = torch.tensor(3.0)
    assert float(ClipLoss(local_loss=True)(audio, text, scale)) == pytest.approx(float(ClipLoss()(audio, text, scale)), rel=1e-6)


def test_identity_soft_targets_equal_the_default():
    audio, text = _embeddings()
    eye = torch.eye(6)
    scale = torch.tensor(5.0)
    assert float(ClipLoss()(audio, text, scale, targets=(eye, eye))) == pytest.approx(float(ClipLoss()(audio, text, scale)), rel=1e-6)
    # a soft target moves the loss: the targets are really used
    soft = 0.8 * eye + 0.2 / 6
    assert float(ClipLoss()(audio, text, scale, targets=(soft, soft))) != pytest.approx(float(ClipLoss()(audio, text, scale)), rel=1e-4)
    with pytest.raises(ValueError, match="targets have shape"):
        ClipLoss()(audio, text, scale, targets=(eye[:3], eye))


def test_mismatched_pairs_are_refused():
    audio, text = _embeddings()
    with pytest.raises(ValueError, match="pair up"):
        ClipLoss()(audio, text[:4], torch.tensor(1.0))


def _one_process_reference():
    sys.path.insert(0, str(HERE))
    try:
        from dist_loss_worker import PairEncoder, global_batch
    finally:
        sys.path.pop(0)
    model = PairEncoder()
    audio, text = global_batch(8)
    a, t, s = model(audio, text)
    loss = ClipLoss()(a, t, s)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("split,local_loss", [("4,4", "0"), ("5,3", "0"), ("4,4", "1")])
def test_two_processes_match_one_process(tmp_path, split, local_loss):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun is part of torch"
    out = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), str(HERE / "dist_loss_worker.py"),
         str(out), split, local_loss],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(out, weights_only=True)
    loss, grads = _one_process_reference()
    if local_loss == "0":
        # every process computes the whole batch's loss from the gathered features
        assert result["losses"].tolist() == pytest.approx([loss, loss], rel=1e-5)
    else:
        # each process scores its own rows; their mean is the whole batch's loss
        assert float(result["losses"].mean()) == pytest.approx(loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
