"""Train the EnCLAP captioner (reference style: `python train.py cfg/clotho/base.yaml`). See `python train.py --help`."""

import sys

from enclap.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
