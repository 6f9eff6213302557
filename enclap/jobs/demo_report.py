"""What the demo reports: :class:`DemoResult` (also ``summary.json``) and the closing summary it prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .demo_records import StageReport, duration

# The scores printed in the closing summary (all of them are in the scores JSON and the printed table).
HEADLINE_METRICS = {"bleu_4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D"}
WEB_DEMO_COMMAND = "python gradio_app.py"

RANDOM_BANNER = """
!!! The EnCodec model of this demo is RANDOM-INITIALISED (the model hub is not used), and its CLAP tower !!!
    is trained here from scratch on the synthetic training captions. Their features tell the synthetic
    sounds apart, so the captioner learns this data set, but its captions come from the synthetic training
    data only and mean nothing for real recordings. With the hub or local copies, run the same demo on the
    real models:
        enclap-demo --encodec facebook/encodec_24khz --clap laion/clap-htsat-fused
"""


@dataclass
class DemoResult:
    """The outcome of :func:`enclap.jobs.demo.run_demo` (also written to ``summary.json``).

    ``baseline_scores``: the captioner at its random initialisation; ``constant_baseline``: the audio-blind
    baseline, ``{"caption", "scores", "chosen_on", "candidates"}`` (the one training caption that scores best
    on the validation split, given for every test clip); ``clap``: the trained CLAP tower's test figures
    (``{}`` when real feature models were given).
    """

    output: Path
    stages: dict[str, StageReport]
    paths: dict[str, str]
    scores: dict[str, float]
    baseline_scores: dict[str, float]
    unavailable_metrics: dict[str, str]
    captions: list[dict[str, Any]]
    random_feature_models: bool
    seconds: float
    constant_baseline: dict[str, Any] = field(default_factory=dict)
    clap: dict[str, Any] = field(default_factory=dict)
    stage_order: Sequence[str] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "random_feature_models": self.random_feature_models,
            "seconds": round(self.seconds, 2),
            "stages": {name: asdict(report) for name, report in self.stages.items()},
            "paths": self.paths,
            "scores": self.scores,
            "untrained_scores": self.baseline_scores,
            "constant_baseline": self.constant_baseline,
            "clap": self.clap,
            "unavailable_metrics": self.unavailable_metrics,
            "captions": self.captions,
        }


def _score_row(label: str, scores: dict[str, float], names: Sequence[str]) -> str:
    return f"  {label:<35}| " + " | ".join(f"{scores.get(m, float('nan')):8.4f}" for m in names)


def format_clap(clap: dict[str, Any]) -> list[str]:
    """The CLAP tower's test figures next to chance."""
    if not clap:
        return []
    r = clap["retrieval"]
    lines = ["", f"  CLAP tower (trained here) on the {r['clips']} test clips ({r['captions']} captions):"]
    for key, what in (("t2a_R@1", "text->audio R@1"), ("a2t_R@1", "audio->text R@1")):
        lines.append(f"    {what:<22} {r['metrics'][key]:.3f}   (chance {r['chance'][key]:.3f})")
    z = clap.get("zero_shot")
    if z:
        lines.append(f"    {'zero-shot top-1':<22} {z['metrics']['top1']:.3f}   (chance {z['chance']['top1']:.3f}; "
                     f"{z['clips']} single-source clips, {z['classes']} classes)")
    else:
        lines.append("    zero-shot: no single-source clip in this test split")
    return lines


def format_summary(result: DemoResult) -> str:
    """The closing report: where everything is, the scores (trained vs baselines), the time of each stage."""
    lines = ["", f"==== EnCLAP demo finished in {duration(result.seconds)}: everything is under {result.output} ===="]
    width = max(len(k) for k in result.paths)
    lines += [f"  {name.ljust(width)}  {path}" for name, path in result.paths.items()]
    lines += format_clap(result.clap)
    if result.scores:
        names = [m for m in HEADLINE_METRICS if m in result.scores]
        head = " | ".join(f"{HEADLINE_METRICS[m]:>8}" for m in names)
        lines += ["", f"  {'test scores':<35}| {head}", _score_row("trained captioner", result.scores, names)]
        if result.constant_baseline:
            lines.append(_score_row("audio-blind: best constant caption", result.constant_baseline["scores"], names))
        lines.append(_score_row("untrained (random init)", result.baseline_scores, names))
        if result.constant_baseline:
            b = result.constant_baseline
            lines.append(f"  (the constant caption, best of {b['candidates']} training captions on the {b['chosen_on']} split: "
                         f"\"{b['caption']}\")")
        if result.unavailable_metrics:
            lines.append(f"  not computed here: {', '.join(sorted(result.unavailable_metrics))} "
                         "(`enclap-metrics check` says why and how to enable them)")
    lines += ["", "  stage      status              wall time (of the run that did it)"]
    for name in result.stage_order or list(result.stages):
        report = result.stages.get(name)
        if report is not None:
            status = report.status + (" (resumed)" if report.resumed else "")
            lines.append(f"  {name:<10} {status:<19} {duration(report.seconds)}")
    if result.random_feature_models:
        lines += ["", "  Reminder: the EnCodec model was random and the CLAP tower was trained on synthetic data (see the note "
                      "at the start); use --encodec facebook/encodec_24khz --clap laion/clap-htsat-fused for the real ones."]
    lines += ["", "  Rerun the same command to skip what is done (an interrupted stage resumes); --force STAGE redoes a stage.",
              f"  Try the captioner in a browser: {WEB_DEMO_COMMAND}  (the web demo, on 127.0.0.1)"]
    return "\n".join(lines)


__all__ = ["DemoResult", "HEADLINE_METRICS", "RANDOM_BANNER", "WEB_DEMO_COMMAND", "format_summary"]
