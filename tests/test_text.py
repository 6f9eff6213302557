"""enclap.text: tokenizers load from a captioner checkpoint without misreading its config."""

from __future__ import annotations

import logging

from enclap.text import load_tokenizer
from tests.pipeline_factory import build_tiny_checkpoint


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_tokenizer_of_a_small_vocabulary_checkpoint_loads_without_a_config_warning(tmp_path):
    checkpoint = build_tiny_checkpoint(tmp_path / "ckpt")
    collect = _Collect()
    transformers_logger = logging.getLogger("transformers")  # transformers' loggers do not propagate to the root
    transformers_logger.addHandler(collect)
    # Other tests (and the training command) quiet transformers' logging for the whole process: hear warnings here.
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        tokenizer = load_tokenizer(checkpoint)
        # The collector does hear transformers' warnings, so an empty list below means there were none.
        logging.getLogger("transformers.configuration_utils").warning("probe: encodec_pad_token_id")
    finally:
        transformers_logger.removeHandler(collect)
        hf_logging.set_verbosity(verbosity)
    assert collect.messages[-1] == "probe: encodec_pad_token_id"
    collect.messages.pop()
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) < 1024  # the case where transformers' BART config took the codec pad id for a text token
    assert not [m for m in collect.messages if "encodec_pad_token_id" in m]
