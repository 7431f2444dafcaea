"""Helpers of the embedded-model training job (espeak-ng synthesis only for a tiny long utterance)."""

import os
import random

import numpy as np
import pytest

from operators.asr.nemo_checkpoint import EMBEDDED_MODEL
from operators.asr.vocabulary import SentencePieceVocabulary
from pipelines.common import ConfigError
from pipelines.tools import train_asr
from operators.asr.embedded_vocabulary import COMMANDS, DIGITS, WORDS
from pipelines.tools.train_asr import train_tokenizer, word_error_rate
from tests.live_speech import needs_espeak


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


@needs_espeak
def test_long_utterances_speak_their_transcript_from_their_word_pool_in_one_voice():
    digits = train_asr.long_utterance(3, ["m4"], (2.0, 2.5), DIGITS)
    commands = train_asr.long_utterance(4, ["m4"], (2.0, 2.5), COMMANDS)
    for (audio, text, voice), pool in ((digits, DIGITS), (commands, COMMANDS)):
        assert text.split() and set(text.split()) <= set(pool)
        assert voice.endswith("+m4") and audio.dtype == np.float32
        assert 2.0 <= len(audio) / train_asr.SAMPLE_RATE < 10.0  # spoken up to the drawn length, then padded
    again, _, _ = train_asr.long_utterance(3, ["m4"], (2.0, 2.5), DIGITS)
    assert np.array_equal(again, digits[0])  # deterministic per seed, so the held-out set is reproducible
