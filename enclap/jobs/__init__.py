"""Long-running jobs (feature extraction, training, evaluation): each resumable, each with progress.

Import the job you need (``from enclap.jobs.extract import run_extraction``); this package imports nothing.
"""
