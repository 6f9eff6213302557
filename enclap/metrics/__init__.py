"""Audio captioning metrics (moved from enclap/metrics.py; split into modules in the next commit)."""

from .scorer import *  # noqa: F401,F403
from .scorer import _CORENLP_MARKERS, main  # noqa: F401
