"""Long-running jobs (feature extraction, training, evaluation): each resumable, each with progress.

Import the job you need (``from enclap.jobs.extract import run_extraction``); this package imports nothing.
"""


def quiet_model_loading() -> None:
    """Hide transformers' per-model "Loading weights" bars: a job shows one progress bar of its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
