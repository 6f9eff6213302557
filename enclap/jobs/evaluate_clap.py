"""``enclap-eval-clap``: retrieval and zero-shot evaluation of a CLAP tower (see :mod:`enclap.clap.evaluation`).

    python -m enclap.jobs.evaluate_clap retrieval --model runs/clap-tiny/best --manifest test.csv --audio-root AUDIO
    python -m enclap.jobs.evaluate_clap zeroshot --model DIR --labels ESC-50/meta/esc50.csv --audio-root ESC-50/audio
"""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from ..clap.evaluation import main as evaluation_main

    return evaluation_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
