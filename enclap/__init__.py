"""EnCLAP: audio captioning from EnCodec codes and CLAP embeddings with a BART captioner.

Importing the package does no work: heavy modules (torch, transformers) load only when a submodule that
needs them is imported.
"""

__version__ = "0.1.0"
