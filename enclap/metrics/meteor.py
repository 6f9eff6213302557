"""METEOR 1.5: one Java process scores every corpus of a call."""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from ..errors import MetricUnavailableError
from .resources import METEOR_JAR, SETUP_HOW_TO


def _meteor_text(text: str) -> str:
    # "|||" separates fields of METEOR's protocol (aac-metrics strips it from candidates; here from references too).
    return text.replace("|||", "").replace("  ", " ")


class MeteorProcess:
    """A running METEOR 1.5, the program and options of aac-metrics' ``meteor`` (``-stdio -l en -norm``).

    Start-up (the JVM and the ~60 MB paraphrase table) is most of METEOR's time, so the scorer starts this
    process first and tokenises and computes the other metrics while it loads. :meth:`score` sends each pair
    as a ``SCORE`` line returning its statistics, then one ``EVAL`` line per corpus aggregates them, so
    several corpora (the rounds of :func:`reference_ceiling`) cost one start-up.
    """

    def __init__(self, java: str | os.PathLike, cache_dir: str | os.PathLike, *, language: str = "en", max_memory: str = "2G") -> None:
        self.jar = Path(cache_dir) / METEOR_JAR
        if not self.jar.is_file():
            raise MetricUnavailableError(f"METEOR jar missing ({self.jar}): {SETUP_HOW_TO}")
        cmd = [str(java), "-Duser.country=US", "-Duser.language=en", f"-Xmx{max_memory}", "-jar", str(self.jar),
               "-", "-", "-stdio", "-l", language, "-norm"]
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    def __enter__(self) -> "MeteorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the process (idempotent)."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.kill()
        self._proc.wait()
        self._stderr.close()

    def _failure(self, what: str) -> RuntimeError:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stderr.seek(0)
        tail = self._stderr.read().decode("utf-8", "replace").strip()[-1200:]
        return RuntimeError(f"METEOR ({self.jar}) {what}: {tail or 'no error output'}")

    def score(
        self,
        candidates: Sequence[str],
        references: Sequence[Sequence[str]],
        corpora: Sequence[Sequence[int]],
    ) -> tuple[list[float], list[float]]:
        """Sentence scores of every pair and one corpus score per index list of ``corpora``."""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        lines = [
            f"SCORE ||| {' ||| '.join(_meteor_text(r) for r in refs)} ||| {_meteor_text(cand)}\n".encode("utf-8")
            for cand, refs in zip(candidates, references)
        ]

        def write_all() -> None:
            # A separate writer: METEOR answers each line as it reads it, and writing everything before
            # reading could fill both pipes and block both processes.
            try:
                for line in lines:
                    proc.stdin.write(line)
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the reader sees the process end and reports its error output

        writer = threading.Thread(target=write_all, daemon=True)
        writer.start()
        stats: list[str] = []
        for _ in lines:
            out = proc.stdout.readline()
            if not out:
                error = self._failure("stopped")
                writer.join()
                raise error
            stats.append(out.decode().strip())
        writer.join()
        sentence: list[float] = [math.nan] * len(lines)
        corpus: list[float] = []
        try:
            for group in corpora:
                proc.stdin.write(("EVAL ||| " + " ||| ".join(stats[i] for i in group) + "\n").encode())
                proc.stdin.flush()
                numbers = [float(proc.stdout.readline().strip()) for _ in range(len(group) + 1)]
                for i, value in zip(group, numbers[:-1]):
                    sentence[i] = value
                corpus.append(numbers[-1])
        except (ValueError, OSError) as err:
            raise self._failure(f"returned no score ({err})") from err
        return sentence, corpus


def meteor_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    corpora: Sequence[Sequence[int]],
    *,
    java: str | os.PathLike,
    cache_dir: str | os.PathLike,
    language: str = "en",
    max_memory: str = "2G",
) -> tuple[list[float], list[float]]:
    """METEOR 1.5 sentence scores and one corpus score per index list of ``corpora``, from one Java process
    (see :class:`MeteorProcess`)."""
    with MeteorProcess(java, cache_dir, language=language, max_memory=max_memory) as process:
        return process.score(candidates, references, corpora)
