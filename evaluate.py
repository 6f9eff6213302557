"""Evaluate a checkpoint on a test manifest (same flags as the reference evaluate.py). See --help."""

import sys

from enclap.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
