"""Extract EnCodec codes + CLAP embeddings into a feature store. See `python data/extract_features.py --help`."""

import sys

from enclap.jobs.extract import main

if __name__ == "__main__":
    sys.exit(main())
