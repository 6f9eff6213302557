"""Caption audio files or folders with a checkpoint. See --help."""

import sys

from enclap.cli import caption_main

if __name__ == "__main__":
    sys.exit(caption_main())
