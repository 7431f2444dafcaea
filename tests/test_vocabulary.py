"""The global vocabulary: disjoint ranges, frame-major multi-codebook ids, __vocab.json, round trips."""

import json
import shutil

import numpy as np
import pytest

from operators.corpus.text_tokens import ByteTextTokenizer, HFTextTokenizer, build_text_tokenizer
from operators.corpus.vocabulary import SPECIAL_NAMES, MalformedDocument, Vocabulary, build_vocabulary
from operators.tokenizers.byte_tokens import bytes_to_tokens
from operators.tokenizers.jpeg import JpegTokenizer
from operators.tokenizers.opus import OpusTokenizer
from operators.tokenizers.semantic_audio import DEFAULT_MODEL_DIR, SemanticAudioTokenizer
from pipelines.tools.make_samples import synthetic_image, wav_bytes


def tiny_tokenizer_json(path, texts=("a red circle on blue", "a synthetic tone: chirp bars", "héllo wörld")):
    """A byte-level BPE tokenizer.json trained offline by the tokenizers library itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts) * 4, trainer)
    tokenizer.save(str(path))
    return str(path)


def test_layout_is_disjoint_and_frame_major():
    audio = SemanticAudioTokenizer()
    vocab = build_vocabulary(ByteTextTokenizer(), [JpegTokenizer(), audio])
    assert vocab.specials == {name: i for i, name in enumerate(SPECIAL_NAMES)}
    assert {"pad", "bos", "eos", "<image>", "</image>", "<audio>", "</audio>", "<text>"} <= set(vocab.specials)
    spans = sorted((r.start, r.start + r.size) for r in vocab.ranges)
    assert spans[0][0] == len(SPECIAL_NAMES) and spans[-1][1] == vocab.size
    assert all(a_end == b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # disjoint, no gaps
    sizes = audio.codebook_sizes()
    assert len(sizes) == 1 + audio.model.acoustic.__len__()
    tokens = np.stack([np.arange(5) % k for k in sizes], axis=1)  # [T, 1 + n_acoustic]
    ids = vocab.range_for("audio").to_global(tokens)
    start, offsets = vocab.range_for("audio").start, np.concatenate([[0], np.cumsum(sizes[:-1])])
    assert ids.tolist() == [start + offsets[c] + tokens[t, c] for t in range(5) for c in range(len(sizes))]
    assert np.array_equal(vocab.range_for("audio").from_global(ids), tokens)
    with pytest.raises(ValueError, match="outside its codebooks"):
        vocab.range_for("audio").to_global(tokens + sizes[0])


def test_document_round_trip_and_vocab_json(tmp_path):
    jpeg, opus, text = JpegTokenizer(size=64), OpusTokenizer(), ByteTextTokenizer()
    vocab = build_vocabulary(text, [opus, jpeg])
    image = jpeg.encode(synthetic_image(np.random.default_rng(0))).tokens
    sound = opus.encode(wav_bytes(np.sin(np.arange(8000) / 5.0) * 0.3, 16000)).tokens
    caption = "a red circle — on blue"
    ids = vocab.document([("text", text.encode(caption)), ("image", image), ("audio", sound)])
    assert ids.dtype == np.int32 and ids[0] == vocab.specials["bos"] and ids[-1] == vocab.specials["eos"]
    assert ids.size == 2 + (len(caption.encode()) + 2) + (image.size - 2 + 2) + (sound.size - 2 + 2)
    reread = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert reread == vocab
    parts = reread.split(ids)
    assert [k for k, _ in parts] == ["text", "image", "audio"]
    assert text.decode(parts[0][1]) == caption
    assert np.array_equal(parts[1][1], image) and np.array_equal(parts[2][1], sound)
    layout = vocab.to_json()
    assert layout["size"] == vocab.size and layout["tokenizers"]["jpeg-lm"] == jpeg.version
    assert layout["ranges"]["image"]["codebooks"] == [256] and layout["ranges"]["text"]["start"] == len(SPECIAL_NAMES)


@pytest.mark.parametrize("bad, message", [
    (lambda ids, v: ids[1:], "starts with bos"),
    (lambda ids, v: np.concatenate([ids[:1], [v.specials["<image>"]], ids[1:]]), "unbalanced|closed with|outside"),
    (lambda ids, v: np.concatenate([ids[:-1], [v.size], ids[-1:]]), "outside the vocabulary"),
    (lambda ids, v: np.where(ids == v.specials["</text>"], v.specials["</image>"], ids), "closed with"),
    (lambda ids, v: np.concatenate([ids[:2], [v.range_for("image").start], ids[2:]]), "outside the text range"),
])
def test_malformed_documents_are_refused(bad, message):
    text = ByteTextTokenizer()
    vocab = build_vocabulary(text, [JpegTokenizer()])
    ids = vocab.document([("text", text.encode("hi"))])
    with pytest.raises(MalformedDocument, match=message):
        vocab.split(bad(ids, vocab))


def test_byte_ranges_restore_the_codec_wrapper():
    vocab = build_vocabulary(ByteTextTokenizer(), [JpegTokenizer()])
    payload = bytes(range(256))
    ids = vocab.range_for("image").to_global(bytes_to_tokens(payload))
    assert ids.size == 256 and np.array_equal(vocab.range_for("image").from_global(ids), bytes_to_tokens(payload))


def test_hf_tokenizer_json_offline(tmp_path):
    path = tiny_tokenizer_json(tmp_path / "tokenizer.json")
    text = build_text_tokenizer(path)
    assert isinstance(text, HFTextTokenizer) and text.size >= 256
    caption = "a red circle on blue, héllo"
    ids = text.encode(caption)
    assert ids.dtype == np.int32 and 0 < ids.size < len(caption.encode())  # merges learned
    assert text.decode(ids) == caption
    vocab = build_vocabulary(text, [JpegTokenizer()])
    assert vocab.range_for("text").size == text.size and vocab.to_json()["tokenizers"][text.name] == text.version
    assert text.version.startswith("sha256-")
    with pytest.raises(ValueError, match="not a readable"):
        HFTextTokenizer(str(tmp_path / "missing.json"))


def test_learned_tokenizer_version_is_a_content_hash(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    shipped, same = SemanticAudioTokenizer(), SemanticAudioTokenizer(model_dir=str(copy))
    assert shipped.version == same.version and shipped.version != "1"
    codebook = np.load(copy / "semantic.npy")
    codebook[0, 0] += 1.0
    np.save(copy / "semantic.npy", codebook)
    assert SemanticAudioTokenizer(model_dir=str(copy)).version != shipped.version
