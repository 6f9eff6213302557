"""The CLAP tower: converters from LAION's original checkpoints to transformers' ClapModel (``convert``)."""
