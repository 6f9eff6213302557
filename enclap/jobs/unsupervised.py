"""The unsupervised-improvement recipe in one command: teacher -> embeddings -> curation -> student -> report.

    enclap-unsupervised --config cfg/clap/unsupervised_demo.yaml [key=value ...] [--force STAGE]
    python -m enclap.jobs.unsupervised --config cfg/clap/unsupervised_demo.yaml

The recipe of Wang et al., "Unsupervised Improvement of Audio-Text Cross-Modal Representations" (WASPAA
2023, arXiv:2305.01864; public code ``zhepeiw/clap_curation``), on the project's manifests. Six stages, all
writing under ``output_dir`` (docs/recipes/unsupervised.md):

==========  ==========================================================================================
data        the synthetic captioned data set (:func:`enclap.data.synthetic.generate_dataset`), split into
            the **annotated** set (the first ``data.num_annotated`` training clips with their captions:
            ``annotated.csv``), the **unlabelled pool** (the other training clips' audio only:
            ``pool.json``) and the **caption corpus** (captions without their clips: the pool clips'
            captions, shuffled under anonymous ids, and / or the annotated ones; ``corpus.json``), plus the
            validation and test splits and ``labels/test.csv`` (zero-shot)
teacher     a CLAP tower trained with :func:`enclap.jobs.train_clap.train_clap` on the annotated set
            (``teacher.config`` + ``teacher.overrides``), or the tower directory ``teacher.tower``
embed       the teacher's audio embeddings of the pool and text embeddings of every caption
            (:func:`enclap.jobs.curate.embed_audio` / ``embed_text``: resumable, ``embeddings/``)
curate      DU, DS or ADS (``curation.method``; :mod:`enclap.clap.curation`): the curated manifest
            ``curated.csv`` (file_path,caption,similarity); DS selects the annotated pairs whose captions
            are close to the prompted class labels of the target task (``curation.target_labels``), ADS
            pairs the pool's audio with those captions
student     the student: annotated (replay, ``student.subset_pct``) and curated pairs mixed per item with
            ``student.curation_prob``, from the teacher (``student.init=teacher``) or from scratch, SoftCLAP
            targets with ``student.softclap_beta`` > 0 (:mod:`enclap.training.clap`)
report      zero-shot (:func:`~enclap.clap.evaluation.evaluate_zero_shot`) and retrieval
            (:func:`~enclap.clap.evaluation.evaluate_retrieval`) of teacher and student on the test split,
            side by side: ``report.md`` + ``report.json``
==========  ==========================================================================================

**Resuming.** As the demo (:mod:`enclap.jobs.demo_records`): each stage records a fingerprint of its
settings and of the stages it reads in ``.recipe/<stage>.json`` and is skipped when done with the same
ones; an interrupted stage reruns and resumes through its job's own resume (training from its last
checkpoint, embeddings from the rows stored); changed settings redo that stage and those after it;
``--force STAGE`` redoes it and every later one.

On the synthetic data the report also says how often a curated caption is one of the pool clip's own
captions (``curation.precision``): the pool's true captions are kept aside for that figure only.

Exit codes: 0 done, 1 a stage failed, 2 configuration / data error, 130 / 143 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, EnclapError
from .demo_records import StageFailed, StageRunner, say

logger = logging.getLogger(__name__)

STAGES = ("data", "teacher", "embed", "curate", "student", "report")
STATE_DIR = ".recipe"
METHODS = ("du", "ds", "ads")
CORPUS_PARTS = ("pool", "annotated")
INITS = ("teacher", "scratch")
REPORT_TEMPLATES = ("a {label}", "a {label} sounds", "{label} is heard")  # the synthetic labels' prompts


# --------------------------------------------------------------------------------------------- settings
@dataclass
class RecipeDataConfig:
    directory: str = ""  # where the synthetic data set is generated ("" = <output_dir>/data)
    num_annotated: int = 96  # training clips used with their captions (the teacher's data, the student's replay)
    num_pool: int = 144  # training clips whose audio alone forms the unlabelled pool
    num_valid: int = 24
    num_test: int = 48
    seconds: float = 3.0
    sample_rate: int = 16000
    captions_per_clip: int = 5
    seed: int = 0
    caption_corpus: list[str] = field(default_factory=lambda: ["pool", "annotated"])  # the DU candidates


@dataclass
class RecipeTeacherConfig:
    tower: str = ""  # a trained tower directory to use as the teacher ("" = train one)
    config: str = "cfg/clap/tiny.yaml"  # the CLAP training config of the teacher (relative to the current directory)
    overrides: list[str] = field(default_factory=list)  # key=value for that config (data paths are set by the recipe)


@dataclass
class RecipeCurationConfig:
    method: str = "du"  # du | ds | ads
    threshold: float | None = None  # cosine similarity >= threshold (DU / ADS pairs)
    top_k: int | None = 1  # and / or among each clip's top_k captions
    ds_threshold: float | None = None  # DS: captions this close to some prompted label...
    ds_top_k: int | None = 20  # ... and / or among some label's top_k
    target_labels: str = ""  # DS / ADS: the target task's labels (csv file,label or a list; "" = labels/test.csv)
    prompt: str = "this is a sound of {label}"  # the paper's prompt
    block_size: int = 4096
    batch_size: int = 16  # embedding batch size (audio; text uses 4x)


@dataclass
class RecipeStudentConfig:
    config: str = "cfg/clap/tiny.yaml"  # the CLAP training config of the student
    init: str = "teacher"  # teacher | scratch
    curation_prob: float = 0.5  # the paper's default (softclap_train.yaml); 0 = replay only (a control)
    subset_pct: float = 100.0
    softclap_beta: float = 0.3  # the paper's default; 0 = plain CLAP
    softclap_text: str = "teacher"  # teacher | self
    overrides: list[str] = field(default_factory=list)


@dataclass
class UnsupervisedConfig:
    output_dir: str = "runs/unsupervised-demo"
    data: RecipeDataConfig = field(default_factory=RecipeDataConfig)
    teacher: RecipeTeacherConfig = field(default_factory=RecipeTeacherConfig)
    curation: RecipeCurationConfig = field(default_factory=RecipeCurationConfig)
    student: RecipeStudentConfig = field(default_factory=RecipeStudentConfig)
    templates: list[str] = field(default_factory=lambda: list(REPORT_TEMPLATES))  # zero-shot prompts of the report
    progress: bool = True

    def validate(self) -> None:
        problems = []
        if not self.output_dir:
            problems.append("output_dir is required")
        d, c, s = self.data, self.curation, self.student
        if d.num_annotated < 2 or d.num_pool < 1 or d.num_test < 2:
            problems.append("data.num_annotated must be >= 2, data.num_pool >= 1 and data.num_test >= 2")
        if not d.caption_corpus or any(p not in CORPUS_PARTS for p in d.caption_corpus):
            problems.append(f"data.caption_corpus must list some of {', '.join(CORPUS_PARTS)}, got {list(d.caption_corpus)}")
        if c.method not in METHODS:
            problems.append(f"curation.method must be one of {', '.join(METHODS)}, got {c.method!r}")
        if c.threshold is None and c.top_k is None:
            problems.append("curation: give curation.threshold and/or curation.top_k")
        if c.method in ("ds", "ads") and c.ds_threshold is None and c.ds_top_k is None:
            problems.append("curation.method=ds/ads: give curation.ds_threshold and/or curation.ds_top_k")
        if "{label}" not in c.prompt:
            problems.append(f"curation.prompt must contain '{{label}}', got {c.prompt!r}")
        if s.init not in INITS:
            problems.append(f"student.init must be one of {', '.join(INITS)}, got {s.init!r}")
        if not 0.0 <= s.curation_prob <= 1.0:
            problems.append(f"student.curation_prob must be in [0, 1] (0 = replay only), got {s.curation_prob}")
        if not 0.0 < s.subset_pct <= 100.0:
            problems.append(f"student.subset_pct must be in (0, 100], got {s.subset_pct}")
        if not 0.0 <= s.softclap_beta <= 1.0:
            problems.append(f"student.softclap_beta must be in [0, 1], got {s.softclap_beta}")
        for name, path in (("teacher.config", self.teacher.config), ("student.config", s.config)):
            if not Path(path).expanduser().is_file():
                problems.append(f"{name}: {path} does not exist (paths are relative to the current directory)")
        if self.teacher.tower and not Path(self.teacher.tower).expanduser().is_dir():
            problems.append(f"teacher.tower: {self.teacher.tower} is not a directory")
        if problems:
            raise ConfigError("; ".join(problems))


def load_unsupervised_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> UnsupervisedConfig:
    """Defaults < YAML file < ``key=value`` overrides, validated."""
    from ..config import load_config

    config = load_config(UnsupervisedConfig, path, list(overrides))
    config.validate()
    return config


# --------------------------------------------------------------------------------------------- the recipe
class Layout:
    """Where each stage writes, under ``output_dir``."""

    def __init__(self, config: UnsupervisedConfig) -> None:
        self.root = Path(config.output_dir).expanduser()
        self.data = Path(config.data.directory).expanduser() if config.data.directory else self.root / "data"
        self.audio = self.data / "audio"
        self.splits = self.root / "splits"
        self.annotated = self.splits / "annotated.csv"
        self.pool = self.splits / "pool.json"
        self.corpus = self.splits / "corpus.json"
        self.truth = self.splits / "pool_truth.json"  # the pool's own captions: the report's precision only
        self.valid = self.data / "csv" / "valid.csv"
        self.test = self.data / "csv" / "test.csv"
        self.labels = self.data / "labels" / "test.csv"
        self.teacher_run = self.root / "teacher"
        self.embeddings = self.root / "embeddings"
        self.curated = self.root / "curated.csv"
        self.curation_stats = self.root / "curation.json"
        self.student_run = self.root / "student"
        self.report_md = self.root / "report.md"
        self.report_json = self.root / "report.json"


def best_or_final(run: Path) -> Path:
    best = run / "best"
    return best if (best / "config.json").is_file() else run / "final"


class Recipe:
    """The stages of one invocation; :meth:`run` goes through them in order."""

    def __init__(self, config: UnsupervisedConfig, force: Sequence[str] = ()) -> None:
        self.config = config
        self.layout = Layout(config)
        unknown = [f for f in force if f not in STAGES and f != "all"]
        if unknown:
            raise ConfigError(f"--force {', '.join(unknown)}: unknown stage; stages are {', '.join(STAGES)} (or all)")
        self.runner = StageRunner(self.layout.root / STATE_DIR, STAGES, force)

    def run(self) -> dict[str, Any]:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.stage_data()
        self.stage_teacher()
        self.stage_embed()
        self.stage_curate()
        self.stage_student()
        self.stage_report()
        return json.loads(self.layout.report_json.read_text())

    # ------------------------------------------------------------------------- 1. data
    def _synthetic(self):
        from ..data.synthetic import SyntheticConfig

        d = self.config.data
        return SyntheticConfig(num_train=d.num_annotated + d.num_pool, num_valid=d.num_valid, num_test=d.num_test,
                               seconds=d.seconds, sample_rate=d.sample_rate, captions_per_clip=d.captions_per_clip, seed=d.seed)

    def stage_data(self) -> None:
        layout, d = self.layout, self.config.data
        synthetic = self._synthetic()

        def run(fresh: bool) -> dict[str, Any]:
            import numpy as np

            from ..data.manifest import read_manifest, resolve_audio_path
            from ..data.synthetic import generate_dataset

            generated = generate_dataset(layout.data, synthetic)
            clips = read_manifest(generated["train"])
            annotated, pool = clips[: d.num_annotated], clips[d.num_annotated :]
            layout.splits.mkdir(parents=True, exist_ok=True)
            with layout.annotated.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["file_path", "caption"])
                writer.writerows((c.file_path, cap) for c in annotated for cap in c.captions)
            pool_rows = [{"id": c.key, "file_path": c.file_path, "path": str(resolve_audio_path(c.file_path, layout.audio))}
                         for c in pool]
            # the corpus forgets which clip a pool caption came from: shuffled, anonymous ids
            pool_captions = [(c.key, cap) for c in pool for cap in c.captions]
            order = np.random.default_rng(d.seed).permutation(len(pool_captions))
            corpus, truth = [], {}
            for rank, i in enumerate(order.tolist()):
                text_id = f"pool/{rank:06d}"
                corpus.append({"id": text_id, "text": pool_captions[i][1], "part": "pool"})
                truth[text_id] = pool_captions[i][0]
            for c in annotated:
                for k, cap in enumerate(c.captions):
                    corpus.append({"id": f"annotated/{c.key}/{k}", "text": cap, "part": "annotated", "file_path": c.file_path})
            layout.pool.write_text(json.dumps(pool_rows, indent=1) + "\n")
            layout.corpus.write_text(json.dumps(corpus, indent=1, ensure_ascii=False) + "\n")
            layout.truth.write_text(json.dumps(truth, indent=1) + "\n")
            return {"annotated_clips": len(annotated), "pool_clips": len(pool), "corpus_captions": len(corpus),
                    "valid_clips": d.num_valid, "test_clips": d.num_test}

        def check(result: dict[str, Any]) -> str | None:
            for path in (layout.annotated, layout.pool, layout.corpus, layout.truth, layout.test, layout.labels):
                if not path.is_file():
                    return f"{path} is missing"
            return None

        self.runner.run("data", {"synthetic": asdict(synthetic), "num_annotated": d.num_annotated}, run=run, check=check,
                        describe=f"synthetic data: {d.num_annotated} annotated clips, a pool of {d.num_pool} unlabelled clips, "
                                 f"{d.num_valid}/{d.num_test} valid/test clips -> {layout.data}, {layout.splits}")

    # ------------------------------------------------------------------------- 2. teacher
    def _clap_config(self, path: str, overrides: Sequence[str], output_dir: Path, extra: Sequence[str]):
        from .train_clap import load_clap_train_config

        settings = [*overrides, f"output_dir={output_dir}", f"data.train_file={self.layout.annotated}",
                    f"data.audio_root={self.layout.audio}", f"model.clip_seconds={self.config.data.seconds}",
                    f"train.progress={str(self.config.progress).lower()}", *extra]
        settings.append(f"data.validation_file={self.layout.valid}" if self.config.data.num_valid else "data.validation_file=''")
        return load_clap_train_config(path, settings)

    @staticmethod
    def _resolved(config: Any) -> dict[str, Any]:
        from omegaconf import OmegaConf

        resolved = OmegaConf.to_container(OmegaConf.structured(config))
        resolved.pop("output_dir")
        for key in ("train_file", "validation_file", "audio_root", "curated_file", "curated_audio_root"):
            resolved["data"].pop(key, None)
        resolved["loss"].pop("softclap_teacher", None)
        resolved["model"].pop("init_from", None)
        for key in ("cpu", "progress"):
            resolved["train"].pop(key, None)
        return resolved

    def teacher_tower(self) -> Path:
        return Path(self.config.teacher.tower).expanduser() if self.config.teacher.tower else best_or_final(self.layout.teacher_run)

    def stage_teacher(self) -> None:
        layout, t = self.layout, self.config.teacher
        if t.tower:
            self.runner.not_run("teacher", {"tower": str(Path(t.tower).expanduser().resolve())},
                                f"using the given teacher tower {t.tower}", {"tower": t.tower})
            return
        config = self._clap_config(t.config, t.overrides, layout.teacher_run, [])
        settings = {"upstream": self.runner.fingerprints["data"], "config": self._resolved(config)}

        def run(fresh: bool) -> dict[str, Any]:
            return self._train(config, "teacher")

        self.runner.run("teacher", settings, run=run, check=lambda r: self._tower_problem(self.teacher_tower()),
                        wipe=[layout.teacher_run],
                        describe=f"train the teacher CLAP on the {self.config.data.num_annotated} annotated clips "
                                 f"({t.config}, {config.train.num_train_epochs} epochs) -> {layout.teacher_run}")

    @staticmethod
    def _train(config: Any, name: str) -> dict[str, Any]:
        from .train_clap import train_clap

        result = train_clap(config)
        if result.status != "completed":
            raise RecipeInterrupted(name, result.signal or "a stop request")
        return {"steps": result.global_step, "best": result.best,
                "tower": str(result.best_dir if result.best_dir is not None else result.final_dir)}

    @staticmethod
    def _tower_problem(directory: Path) -> str | None:
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                return f"{directory / name} is missing"
        return None

    # ------------------------------------------------------------------------- 3. embed
    def _tables(self):
        from ..clap.curation import EmbeddingTable

        return (EmbeddingTable.load(self.layout.embeddings / "audio"), EmbeddingTable.load(self.layout.embeddings / "text"))

    def stage_embed(self) -> None:
        layout, c = self.layout, self.config.curation
        settings = {"upstream": [self.runner.fingerprints["data"], self.runner.fingerprints["teacher"]]}

        def run(fresh: bool) -> dict[str, Any]:
            from .curate import embed_audio, embed_text

            pool = json.loads(layout.pool.read_text())
            corpus = json.loads(layout.corpus.read_text())
            teacher = str(self.teacher_tower())
            audio = embed_audio(teacher, [(row["id"], row["path"]) for row in pool], layout.embeddings / "audio",
                                batch_size=c.batch_size, audio_root=layout.audio, progress=self.config.progress)
            text = embed_text(teacher, [(row["id"], row["text"]) for row in corpus], layout.embeddings / "text",
                              batch_size=4 * c.batch_size, progress=self.config.progress)
            if len(audio) < len(pool):  # embed_audio skips unreadable files (and says which)
                say(f"    {len(pool) - len(audio)} pool clip(s) could not be read and are left out")
            return {"audio": len(audio), "text": len(text), "dim": int(audio.vectors.shape[1])}

        def check(result: dict[str, Any]) -> str | None:
            try:
                audio, text = self._tables()
            except (OSError, EnclapError) as err:
                return str(err)
            if len(audio) != result.get("audio") or len(text) != result.get("text"):
                return "the embedding tables do not have the rows recorded"
            return None

        self.runner.run("embed", settings, run=run, check=check, wipe=[layout.embeddings],
                        describe=f"teacher embeddings of the pool's audio and of the caption corpus -> {layout.embeddings}")

    # ------------------------------------------------------------------------- 4. curate
    def stage_curate(self) -> None:
        layout, c, d = self.layout, self.config.curation, self.config.data
        settings = {"upstream": self.runner.fingerprints["embed"], "curation": asdict(c), "corpus": sorted(d.caption_corpus)}
        if c.method in ("ds", "ads"):
            labels_file = Path(c.target_labels).expanduser() if c.target_labels else layout.labels
            settings["labels"] = str(labels_file)

        def run(fresh: bool) -> dict[str, Any]:
            from ..clap.curation import curate, domain_captions, label_embeddings, read_target_labels, write_curated_manifest
            from ..clap.modeling import ClapTowerModel

            audio, text = self._tables()
            corpus = {row["id"]: row for row in json.loads(layout.corpus.read_text())}
            pool = {row["id"]: row["file_path"] for row in json.loads(layout.pool.read_text())}
            stats: dict[str, Any] = {"method": c.method}
            if c.method == "du":
                candidates = [i for i in text.ids if corpus[i]["part"] in d.caption_corpus]
                result = curate(audio, text, threshold=c.threshold, top_k=c.top_k, block_size=c.block_size,
                                restrict_to=candidates)
                pairs, audio_files = result.pairs, pool
            else:
                teacher = ClapTowerModel.from_pretrained(str(self.teacher_tower())).eval()
                label_names = read_target_labels(labels_file)
                labels = label_embeddings(teacher, label_names, (c.prompt,), model=str(self.teacher_tower()))
                annotated_ids = [i for i in text.ids if corpus[i]["part"] == "annotated"]
                chosen = domain_captions(labels, text.subset(annotated_ids), threshold=c.ds_threshold, top_k=c.ds_top_k,
                                         block_size=c.block_size)
                domain_ids = [x.text_id for x in chosen]
                stats.update(labels=len(label_names), domain_captions=len(domain_ids))
                if not domain_ids:
                    raise StageFailed("DS selected no caption: lower curation.ds_threshold or give curation.ds_top_k")
                if c.method == "ds":  # the annotated pairs of the selected captions
                    from ..clap.curation import CuratedPair

                    sims = {x.text_id: x.similarity for x in chosen}
                    pairs = [CuratedPair(i, i, sims[i]) for i in domain_ids]
                    audio_files = {i: corpus[i]["file_path"] for i in domain_ids}
                else:
                    result = curate(audio, text, threshold=c.threshold, top_k=c.top_k, block_size=c.block_size,
                                    restrict_to=domain_ids)
                    pairs, audio_files = result.pairs, pool
            if not pairs:
                raise StageFailed(f"curation ({c.method}) kept no pair: lower curation.threshold or give curation.top_k")
            rows = write_curated_manifest(pairs, audio_files, {i: row["text"] for i, row in corpus.items()}, layout.curated)
            truth = json.loads(layout.truth.read_text())
            own = 0
            if c.method != "ds":
                captions_of: dict[str, set[str]] = {}
                for text_id, clip in truth.items():
                    captions_of.setdefault(clip, set()).add(corpus[text_id]["text"])
                for row in corpus.values():
                    if row["part"] == "annotated":
                        captions_of.setdefault(row["id"].split("/", 1)[1].rsplit("/", 1)[0], set()).add(row["text"])
                own = sum(corpus[p.text_id]["text"] in captions_of.get(p.audio_id, set()) for p in pairs)
            sims = [p.similarity for p in pairs]
            stats.update(pairs=rows, clips=len({p.audio_id for p in pairs}), captions=len({p.text_id for p in pairs}),
                         similarity_min=min(sims), similarity_mean=sum(sims) / len(sims), similarity_max=max(sims))
            if c.method != "ds":
                stats["precision"] = own / len(pairs)  # curated caption is one of the clip's own (synthetic truth)
            layout.curation_stats.write_text(json.dumps(stats, indent=2) + "\n")
            say(f"    {rows} curated pairs over {stats['clips']} clips, similarity {stats['similarity_min']:.3f}.."
                f"{stats['similarity_max']:.3f}" + (f", precision {stats['precision']:.3f}" if "precision" in stats else ""))
            return stats

        def check(result: dict[str, Any]) -> str | None:
            return None if layout.curated.is_file() and layout.curation_stats.is_file() else f"{layout.curated} is missing"

        self.runner.run("curate", settings, run=run, check=check, wipe=[layout.curated, layout.curation_stats],
                        describe=f"{c.method.upper()} curation (threshold {c.threshold}, top_k {c.top_k}) -> {layout.curated}")

    # ------------------------------------------------------------------------- 5. student
    def student_config(self):
        s, layout = self.config.student, self.layout
        teacher = self.teacher_tower()
        # curation_prob=0 is the replay-only control: the same training without the curated pairs
        extra = [f"data.curated_file={layout.curated}", f"data.curated_audio_root={layout.audio}"] if s.curation_prob > 0 else []
        extra += [f"data.curation_prob={s.curation_prob}", f"data.subset_pct={s.subset_pct}",
                 f"loss.softclap_beta={s.softclap_beta}", f"loss.softclap_text={s.softclap_text}",
                 f"loss.softclap_teacher={teacher}"]
        if s.init == "teacher":
            extra += ["model.init=pretrained", f"model.init_from={teacher}", "tokenizer.train_from_captions=false",
                      "tokenizer.name_or_path=''"]
        return self._clap_config(s.config, s.overrides, layout.student_run, extra)

    def stage_student(self) -> None:
        layout, s = self.layout, self.config.student
        config = self.student_config()
        settings = {"upstream": [self.runner.fingerprints["teacher"], self.runner.fingerprints["curate"]],
                    "config": self._resolved(config), "init": s.init}

        self.runner.run("student", settings, run=lambda fresh: self._train(config, "student"),
                        check=lambda r: self._tower_problem(best_or_final(layout.student_run)), wipe=[layout.student_run],
                        describe=f"train the student ({s.init}; curated pairs with probability {s.curation_prob}, "
                                 f"{s.subset_pct:g}% of the annotated set, SoftCLAP beta {s.softclap_beta}) -> {layout.student_run}")

    # ------------------------------------------------------------------------- 6. report
    def stage_report(self) -> None:
        layout = self.layout
        towers = {"teacher": self.teacher_tower(), "student": best_or_final(layout.student_run)}
        settings = {"upstream": [self.runner.fingerprints["teacher"], self.runner.fingerprints["student"]],
                    "templates": list(self.config.templates)}

        def run(fresh: bool) -> dict[str, Any]:
            report = evaluate_towers(towers, layout.test, layout.labels, layout.audio, self.config.templates)
            report["curation"] = json.loads(layout.curation_stats.read_text())
            report["settings"] = {"curation": asdict(self.config.curation), "student": asdict(self.config.student)}
            layout.report_json.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
            layout.report_md.write_text(format_markdown(report))
            say("    " + format_markdown(report).replace("\n", "\n    "))
            return {"report": str(layout.report_json)}

        def check(result: dict[str, Any]) -> str | None:
            return None if layout.report_json.is_file() and layout.report_md.is_file() else f"{layout.report_json} is missing"

        self.runner.run("report", settings, run=run, check=check, wipe=[layout.report_md, layout.report_json],
                        describe=f"zero-shot and retrieval of teacher and student on the test split -> {layout.report_md}")


class RecipeInterrupted(EnclapError):
    """A training stage was stopped by a signal after saving a checkpoint; rerunning resumes it."""

    def __init__(self, stage: str, signal_name: str) -> None:
        super().__init__(f"stage '{stage}' stopped by {signal_name}; rerun the same command to resume it")
        self.stage = stage
        self.signal_name = signal_name


# --------------------------------------------------------------------------------------------- evaluation
REPORT_COLUMNS = (("zero_shot", "top1"), ("zero_shot", "top5"), ("retrieval", "t2a_R@1"), ("retrieval", "t2a_R@10"),
                  ("retrieval", "t2a_mAP@10"), ("retrieval", "a2t_R@1"), ("retrieval", "a2t_R@10"), ("retrieval", "a2t_mAP@10"))


def evaluate_towers(towers: dict[str, Path], manifest: Path, labels: Path, audio_root: Path,
                    templates: Sequence[str]) -> dict[str, Any]:
    """Zero-shot and retrieval figures of every tower directory (``{name: dir}``), in one report."""
    from ..clap.embedder import ClapTowerEmbedder
    from ..clap.evaluation import evaluate_retrieval, evaluate_zero_shot

    rows = {}
    for name, directory in towers.items():
        embedder = ClapTowerEmbedder.from_pretrained(directory, device="cpu")
        rows[name] = {"tower": str(directory),
                      "zero_shot": evaluate_zero_shot(embedder, labels, audio_root, tuple(templates)),
                      "retrieval": evaluate_retrieval(embedder, manifest, audio_root)}
    return {"towers": rows, "test_manifest": str(manifest), "labels": str(labels)}


def format_markdown(report: dict[str, Any]) -> str:
    """Teacher and student side by side (a markdown table), then the curation figures."""
    towers = report["towers"]
    first = next(iter(towers.values()))
    header = "| tower | " + " | ".join(f"{'ZS' if kind == 'zero_shot' else 'ret'} {metric}" for kind, metric in REPORT_COLUMNS) + " |"
    lines = ["# Unsupervised improvement: teacher vs student", "",
             f"Test split: {first['retrieval']['clips']} clips, {first['retrieval']['captions']} captions (retrieval); "
             f"{first['zero_shot']['clips']} labelled clips, {first['zero_shot']['classes']} classes (zero-shot).", "",
             header, "|" + "---|" * (len(REPORT_COLUMNS) + 1)]
    for name, row in sorted(towers.items(), key=lambda item: (item[0] != "teacher", item[0])):  # teacher first
        lines.append(f"| {name} | " + " | ".join(f"{row[kind]['metrics'][metric]:.4f}" for kind, metric in REPORT_COLUMNS) + " |")
    chance = [first[kind]["chance"].get(metric) for kind, metric in REPORT_COLUMNS]
    lines.append("| chance | " + " | ".join("-" if v is None else f"{v:.4f}" for v in chance) + " |")
    curation = report.get("curation")
    if curation:
        lines += ["", f"Curation ({curation['method'].upper()}): {curation['pairs']} pairs over {curation['clips']} clips and "
                      f"{curation['captions']} captions, similarity {curation['similarity_min']:.3f}..{curation['similarity_max']:.3f} "
                      f"(mean {curation['similarity_mean']:.3f})"
                      + (f"; precision {curation['precision']:.3f} (curated caption is one of the clip's own)" if "precision" in curation else "")
                      + "."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclap-unsupervised",
        description="SoftCLAP's unsupervised-improvement recipe: teacher -> embeddings -> curation -> student -> "
                    "teacher vs student report. Rerun to skip finished stages; an interrupted stage resumes.",
        epilog="Settings: defaults < the YAML config < key=value overrides, e.g. curation.method=ads student.softclap_beta=0.",
    )
    parser.add_argument("--config", help="YAML settings (e.g. cfg/clap/unsupervised_demo.yaml)")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help=f"redo STAGE and every stage after it ({', '.join(STAGES)}, or all); repeatable")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    parser.add_argument("args", nargs="*", metavar="key=value", help="overrides")
    return parser


def run_recipe(config: UnsupervisedConfig, force: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or resume, or skip) every stage; returns the report (also in ``report.json``)."""
    return Recipe(config, force).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (see the module docstring)."""
    from . import quiet_model_loading

    args = build_parser().parse_intermixed_args(argv)  # overrides may sit before or after --force
    try:
        bad = [a for a in args.args if "=" not in a]
        if bad:
            raise ConfigError(f"unexpected argument(s) {bad}: expected key=value overrides")
        config = load_unsupervised_config(args.config, args.args)
    except ConfigError as err:
        print(f"unsupervised: configuration error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(config)), end="")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_model_loading()
    try:
        run_recipe(config, args.force)
    except RecipeInterrupted as err:
        print(f"unsupervised: {err}", file=sys.stderr)
        return 143 if err.signal_name == "SIGTERM" else 130
    except KeyboardInterrupt:
        print("unsupervised: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except ConfigError as err:
        print(f"unsupervised: configuration error: {err}", file=sys.stderr)
        return 2
    except EnclapError as err:
        print(f"unsupervised: {err}", file=sys.stderr)
        return 1
    print(f"unsupervised: done; report in {Layout(config).report_md}", flush=True)
    return 0


__all__ = ["UnsupervisedConfig", "evaluate_towers", "format_markdown", "load_unsupervised_config", "main", "run_recipe"]

if __name__ == "__main__":
    raise SystemExit(main())
