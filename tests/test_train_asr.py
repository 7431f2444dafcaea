"""Helpers of the embedded-model training job (the espeak-ng synthesis itself is not run here)."""

import os
import random

import pytest

from operators.asr.nemo_checkpoint import EMBEDDED_MODEL
from operators.asr.vocabulary import SentencePieceVocabulary
from pipelines.common import ConfigError
from pipelines.tools import train_asr
from operators.asr.embedded_vocabulary import WORDS
from pipelines.tools.train_asr import train_tokenizer, word_error_rate


def test_word_error_rate_counts_edits_over_reference_words():
    refs = ["one two three", "stop", "go left"]
    hyps = ["one three", "stop", "go right now"]
    # one deletion; none; one substitution + one insertion → 3 errors / 6 reference words
    assert word_error_rate(refs, hyps) == 3 / 6
    assert word_error_rate(refs, refs) == 0.0


def test_tokenizer_gives_one_piece_per_vocabulary_word():
    rng = random.Random(0)
    texts = [" ".join(WORDS)] * 4 + [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(2000)
    ]
    vocab = SentencePieceVocabulary(train_tokenizer(texts, 64))
    assert all(len(vocab.encode(word)) == 1 for word in WORDS)
    assert vocab.decode(vocab.encode("seven go left")) == "seven go left"


def test_shipped_model_is_replaced_only_with_the_explicit_flag(tmp_path):
    assert train_asr.DEFAULT_OUTPUT.startswith("out" + os.sep)
    before = os.stat(EMBEDDED_MODEL).st_mtime_ns
    with pytest.raises(ConfigError, match="--install-as-default"):
        train_asr.run(["--output", EMBEDDED_MODEL])  # refused before espeak-ng or training start
    assert os.stat(EMBEDDED_MODEL).st_mtime_ns == before
    mine = str(tmp_path / "m.nemo")
    assert train_asr.output_paths(mine, False) == [mine]
    assert train_asr.output_paths(mine, True) == [mine, EMBEDDED_MODEL]
    assert train_asr.output_paths(EMBEDDED_MODEL, True) == [EMBEDDED_MODEL]
