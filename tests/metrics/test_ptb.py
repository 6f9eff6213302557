"""Caption sanitising before the PTB tokenizer (no Java)."""

from __future__ import annotations

import pytest

from enclap import metrics as M




@pytest.mark.parametrize(
    "raw, clean",
    [
        ("a dog\nbarks", "a dog barks"),
        ("a dog\r\nbarks\r", "a dog barks"),
        ("line\u2028sep\u2029para", "line sep para"),
        ("nel\x85char", "nel char"),  # the PTB lexer reads U+0085 as an ellipsis and as a line end
        ("tab\there\x0bvt\x0cff\x1cfs", "tab\there vt ff fs"),
        ("zero\u200bwidth\ufeff", "zero\u200bwidth\ufeff"),  # the tokenizer splits at U+200B, as in aac-metrics
        ("lone \ud83c surrogate", "lone surrogate"),
        ("  spaced   out  ", "spaced out"),
        ("café naïve 日本語", "café naïve 日本語"),
        ("", ""),
    ],
)
def test_sanitize_caption_keeps_one_line(raw: str, clean: str) -> None:
    out = M.sanitize_caption(raw)
    assert out == clean
    assert len(out.splitlines()) <= 1
    out.encode("utf-8")  # never raises: lone surrogates are gone
