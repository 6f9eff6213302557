"""Console scripts: each maps to the ``main(argv)`` of a job module, imported only when run."""

from __future__ import annotations

import sys
from typing import Sequence


def extract_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.extract import main

    return main(argv)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.evaluate import main

    return main(argv)


def caption_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.caption import main

    return main(argv)


def metrics_main(argv: Sequence[str] | None = None) -> int:
    from .metrics import main

    return main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.train_captioner import main

    return main(argv)


def demo_data_main(argv: Sequence[str] | None = None) -> int:
    from .data.synthetic import main

    return main(argv)


def demo_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.demo import main

    return main(argv)


def train_clap_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.train_clap import main

    return main(argv)


def train_classifier_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.train_classifier import main

    return main(argv)


def search_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.search import main

    return main(argv)


def eval_clap_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.evaluate_clap import main

    return main(argv)


def ckpt_main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint_tools import main

    return main(argv)


def unsupervised_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.unsupervised import main

    return main(argv)


def curate_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.curate import main

    return main(argv)


def tune_main(argv: Sequence[str] | None = None) -> int:
    from .jobs.tune import main

    return main(argv)


def shards_main(argv: Sequence[str] | None = None) -> int:
    from .data.shards import main

    return main(argv)


def web_main(argv: Sequence[str] | None = None) -> int:
    from .webapp import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(caption_main())
