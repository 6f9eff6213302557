"""Caption sanitising and the Stanford PTB tokenizer, run as aac-metrics runs it."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import MetricUnavailableError
from .resources import PTB_JAR, SETUP_HOW_TO

# aac-metrics' PTB_PUNCTUATIONS: tokens removed after tokenisation.
PTB_PUNCTUATIONS = frozenset(
    ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";")
)

# What the PTB tokenizer (or the line-by-line protocol around it) takes as the end of a line.
_LINE_BREAKS = dict.fromkeys(map(ord, "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), " ")


def sanitize_caption(text: str) -> str:
    """One line of text the PTB tokenizer keeps on one line (see the module docstring).

    Only what would break the one-caption-per-line protocol is changed: line-ending characters become
    spaces and lone surrogates (not encodable) are removed. Everything else, invisible format characters
    such as U+200B included, is left to the tokenizer, so tokens are exactly aac-metrics' own.
    """
    text = text.translate(_LINE_BREAKS)
    text = "".join(ch for ch in text if not "\ud800" <= ch <= "\udfff")
    return re.sub(" {2,}", " ", text).strip(" ")


def ptb_tokenize(
    sentences: Sequence[str],
    java: str | os.PathLike,
    cache_dir: str | os.PathLike,
    tmp_dir: str | os.PathLike | None = None,
) -> list[list[str]]:
    """Tokenise with Stanford's PTB tokenizer exactly as aac-metrics does (lower case, punctuation dropped).

    One Java run for all ``sentences``; each is sanitised first, and empty ones never reach Java (their
    tokens are ``[]``), so the output lines always pair with the input.
    """
    clean = [sanitize_caption(s) for s in sentences]
    work = [i for i, s in enumerate(clean) if s]
    tokens: list[list[str]] = [[] for _ in clean]
    if not work:
        return tokens
    jar = Path(cache_dir) / PTB_JAR
    if not jar.is_file():
        raise MetricUnavailableError(f"PTB tokenizer jar missing ({jar}): {SETUP_HOW_TO}")
    tmp_dir = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    handle = tempfile.NamedTemporaryFile("wb", delete=False, dir=tmp_dir, prefix="ptb_sentences_", suffix=".txt")
    try:
        with handle:
            handle.write("\n".join(clean[i] for i in work).encode("utf-8"))
        proc = subprocess.run(
            [str(java), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", handle.name],
            capture_output=True,
        )
    finally:
        os.unlink(handle.name)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode('utf-8', 'replace')[-800:]}")
    lines = proc.stdout.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "" and len(lines) == len(work) + 1:
        lines.pop()
    if len(lines) != len(work):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(work)} captions")
    for i, line in zip(work, lines):
        tokens[i] = [w for w in line.rstrip().split(" ") if w and w not in PTB_PUNCTUATIONS]
    return tokens
