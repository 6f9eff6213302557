"""CLAP tower throughput on CPU: training (clips/s), embedding (clips/s), and the cost of gathering features.

Measured in one run, one torch thread per process (as a launcher runs one process per core), CPU time
(``time.process_time``: robust to other jobs on a shared machine), median of interleaved repeats:

* **training step** (forward + backward + AdamW step of :class:`~enclap.training.clap.ClapLossModule`,
  batch of 8 pairs) of the tiny tower (``cfg/clap/tiny.yaml``: CNN14 at 1/8 width, 16 kHz, 5 s clips) and of
  an **HTS-AT-tiny** tower (LAION's audio size: 96-d patches, depths 2-2-6-2, 10 s mels at 48 kHz) with the
  same small text tower (2-layer RoBERTa, 64-d), so the figure is the audio tower's;
* **HTS-AT mel front end** (LAION's ClapFeatureExtractor on a 10 s clip, the data path's per-clip cost,
  paid in DataLoader workers);
* **embedding** (:class:`~enclap.clap.embedder.ClapTowerEmbedder.embed`, the captioner's extraction path)
  of 10 s clips;
* **gathering features**: the loss step (InfoNCE forward + backward on 64 x 512 embeddings per process)
  in 2 real processes (``torchrun``, gloo) without gathering (each process its own 64 pairs), with the
  gather through ``torch.distributed.nn.all_gather`` (gradients flow back), and with the gather plus
  ``local_loss``; wall time per step on process 0, so the communication is included.

All weights are random (no checkpoint is downloaded); throughput does not depend on their values.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SMALL_TEXT = dict(model_type="roberta", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  type_vocab_size=1)
HTSAT_TINY = dict(patch_embeds_hidden_size=96, depths=[2, 2, 6, 2], num_attention_heads=[4, 8, 16, 32], hidden_size=768,
                  enable_fusion=False)


def _towers(quick: bool):
    from enclap.clap.configuration import ClapTowerConfig
    from enclap.clap.modeling import ClapTowerModel
    from enclap.jobs.train_clap import load_clap_train_config, tower_config_from

    tiny = load_clap_train_config(REPO / "cfg" / "clap" / "tiny.yaml", ["output_dir=x", "data.audio_root=x"]).model
    htsat = dict(HTSAT_TINY)
    if quick:
        htsat.update(patch_embeds_hidden_size=8, depths=[2, 1], num_attention_heads=[1, 2], hidden_size=16)
    return {
        "tiny (CNN14/8, 16 kHz, 5 s)": ClapTowerModel(tower_config_from(tiny)),
        "HTS-AT-tiny (48 kHz, 10 s)" if not quick else "HTS-AT (quick size)": ClapTowerModel(
            ClapTowerConfig(audio_encoder="htsat", audio_config=htsat, text_config=SMALL_TEXT, projection_dim=512)
        ),
    }


def _inputs(tower, batch: int, rng: np.random.Generator):
    import torch

    from enclap.clap.embedder import tower_audio_input
    from enclap.clap.modeling import htsat_feature_extractor

    c = tower.config
    fe = htsat_feature_extractor(c) if c.audio_encoder == "htsat" else None
    clips = [rng.standard_normal(c.clip_samples).astype(np.float32) * 0.1 for _ in range(batch)]
    features = torch.from_numpy(np.stack([tower_audio_input(c, fe, w, None)[0] for w in clips]))
    ids = torch.randint(3, 400, (batch, 24))
    return clips, features, ids


def _median_cpu(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _train_step_time(tower, batch: int, repeats: int) -> float:
    import torch

    from enclap.clap.loss import ClipLoss
    from enclap.training.clap import ClapLossModule

    module = ClapLossModule(tower, ClipLoss()).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    _, features, ids = _inputs(tower, batch, np.random.default_rng(0))
    mask = torch.ones_like(ids)
    longer = torch.zeros((batch, 1), dtype=torch.bool)

    def step() -> None:
        loss = module(features, ids, mask, longer).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    return _median_cpu(step, repeats)


def _embed_rate(tower, clips: int, repeats: int) -> float:
    from enclap.clap.embedder import ClapTowerEmbedder

    embedder = ClapTowerEmbedder(tower.eval(), batch_size=8)
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(int(10 * embedder.sample_rate)).astype(np.float32) * 0.1 for _ in range(clips)]
    embedder.embed(waves[:1])
    return clips / _median_cpu(lambda: embedder.embed(waves), repeats)


def _mel_rate(clips: int) -> float:
    from enclap.clap.embedder import tower_audio_input
    from enclap.clap.configuration import ClapTowerConfig
    from enclap.clap.modeling import htsat_feature_extractor

    config = ClapTowerConfig(audio_encoder="htsat", text_config=SMALL_TEXT)
    fe = htsat_feature_extractor(config)
    rng = np.random.default_rng(2)
    waves = [rng.standard_normal(480000).astype(np.float32) * 0.1 for _ in range(clips)]
    return clips / _median_cpu(lambda: [tower_audio_input(config, fe, w, None) for w in waves], 3)


# ------------------------------------------------------------------------------------------- gathering
def _gather_worker(out: str, rows: int, dim: int, steps: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from enclap.clap.loss import ClipLoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    gen = torch.Generator().manual_seed(dist.get_rank())
    audio = torch.randn(rows, dim, generator=gen, requires_grad=True)
    text = torch.randn(rows, dim, generator=gen, requires_grad=True)
    scale = torch.tensor(10.0)
    variants = {
        "no gather (each process its own pairs)": None,
        "gather with gradients": ClipLoss(),
        "gather with gradients, local_loss": ClipLoss(local_loss=True),
    }
    results = {}
    for name, loss_fn in variants.items():
        def step() -> None:
            a, t = F.normalize(audio, dim=-1), F.normalize(text, dim=-1)
            if loss_fn is None:
                logits = scale * a @ t.T
                labels = torch.arange(rows)
                loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            else:
                loss = loss_fn(a, t, scale)
            loss.backward()

        for _ in range(3):
            step()
        dist.barrier()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            dist.barrier()
            times.append(time.perf_counter() - start)
        results[name] = statistics.median(times)
    if dist.get_rank() == 0:
        import json

        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def _gather_costs(rows: int, dim: int, steps: int) -> dict[str, float] | str:
    import json

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gather.json"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        run = subprocess.run(
            [torchrun, "--nproc_per_node", "2", "--master_port", str(29600 + os.getpid() % 1000), __file__,
             "--gather-worker", str(out), str(rows), str(dim), str(steps)],
            env=env, capture_output=True, text=True, timeout=900,
        )
        if run.returncode != 0:
            return f"torchrun failed: {run.stderr[-500:]}"
        return json.loads(out.read_text())


def main(quick: bool = False) -> str:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    batch, repeats, embed_clips = (4, 2, 4) if quick else (8, 3, 8)
    try:
        torch.manual_seed(0)
        towers = _towers(quick)
        rows = []
        for name, tower in towers.items():
            params = sum(p.numel() for p in tower.parameters() if p.requires_grad) / 1e6
            step = _train_step_time(tower, batch, repeats)
            embed = _embed_rate(tower, embed_clips, repeats)
            rows.append(f"| {name} | {params:.2f} | {step:.2f} | {batch / step:.2f} | {embed:.2f} |")
        mel = _mel_rate(4 if quick else 16)
    finally:
        torch.set_num_threads(previous)
    gather_rows, gather_dim, gather_steps = (16, 64, 10) if quick else (64, 512, 50)
    gather = _gather_costs(gather_rows, gather_dim, gather_steps)
    lines = [
        "### CLAP tower: training and embedding throughput, cost of gathering",
        "",
        "| tower | trainable params (M) | training step, batch %d (s CPU) | training (clips/s) | embedding 10 s clips (clips/s) |" % batch,
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"HTS-AT's mel front end (LAION's feature extractor, in the DataLoader workers): {mel:.1f} clips/s per process "
        "(10 s clips at 48 kHz).",
        "",
    ]
    if isinstance(gather, str):
        lines.append(f"Gathering: {gather}")
    else:
        base = gather["no gather (each process its own pairs)"]
        lines += [
            f"| loss step, 2 processes x {gather_rows} pairs of {gather_dim}-d embeddings | ms per step | vs no gather |",
            "| --- | --- | --- |",
            *[f"| {name} | {value * 1e3:.2f} | {value / base:.2f}x |" for name, value in gather.items()],
        ]
    lines += [
        "",
        f"Training: forward + backward + AdamW on a batch of {batch} random clips, median of {repeats} after a warm-up, one torch "
        "thread, CPU time; both towers have the same 2-layer 64-d RoBERTa text tower. Embedding: ClapTowerEmbedder "
        f"on {embed_clips} clips of 10 s (repeat-padding / crop included; the tiny tower crops them to its 5 s window). "
        f"Gathering: median wall time of {gather_steps} steps on process 0 under torchrun (gloo, 1 thread each), "
        "barrier included: compare the milliseconds gathering adds with the training steps above.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--gather-worker":
        sys.path.insert(0, str(REPO))
        _gather_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        print(main(quick="--quick" in sys.argv))
