"""Helpers of the embedded-model training job (the espeak-ng synthesis itself is not run here)."""

import random

from operators.asr.streaming import SentencePieceVocabulary
from pipelines.tools.train_asr import VOCABULARY, train_tokenizer, word_error_rate


def test_word_error_rate_counts_edits_over_reference_words():
    refs = ["one two three", "stop", "go left"]
    hyps = ["one three", "stop", "go right now"]
    # one deletion; none; one substitution + one insertion → 3 errors / 6 reference words
    assert word_error_rate(refs, hyps) == 3 / 6
    assert word_error_rate(refs, refs) == 0.0


def test_tokenizer_gives_one_piece_per_vocabulary_word():
    rng = random.Random(0)
    texts = [" ".join(VOCABULARY)] * 4 + [
        " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 4))) for _ in range(2000)
    ]
    vocab = SentencePieceVocabulary(train_tokenizer(texts, 64))
    assert all(len(vocab.encode(word)) == 1 for word in VOCABULARY)
    assert vocab.decode(vocab.encode("seven go left")) == "seven go left"
