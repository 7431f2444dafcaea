"""Documents that keep every member: templates, routing by content, decode-back round trips,
accounting and determinism of build-corpus's ``documents`` table."""

import glob
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.corpus.documents import DocumentBuilder, DocumentDecoder
from operators.corpus.routing import captions
from operators.corpus.templates import BUILTIN_TEMPLATES, NotKept, Template, load_template, resolve_template
from operators.corpus.text_tokens import ByteTextTokenizer, build_text_tokenizer
from operators.corpus.vocabulary import Vocabulary, build_vocabulary
from operators.tokenizers.avc import AvcTokenizer
from operators.tokenizers.base import modality_of
from operators.tokenizers.jpeg import JpegTokenizer
from operators.tokenizers.opus import OpusTokenizer
from pipelines import build_corpus
from pipelines.tools.make_samples import audio_only_mp4, synthetic_image, synthetic_video, wav_bytes, write_sample_shards
from tests.test_vocabulary import tiny_tokenizer_json


@pytest.fixture(scope="module")
def codecs():
    return {"image": JpegTokenizer(size=64), "video": AvcTokenizer(seconds=1.0, fps=2, width=64, height=48),
            "audio": OpusTokenizer()}


@pytest.fixture(scope="module")
def builder(codecs):
    text = ByteTextTokenizer()
    return DocumentBuilder(build_vocabulary(text, list(codecs.values())), codecs, text)


@pytest.fixture(scope="module")
def media():
    rng = np.random.default_rng(1)
    return {"jpg": synthetic_image(rng), "mp4": synthetic_video(rng, with_audio=True),
            "silent.mp4": synthetic_video(rng, with_audio=False), "audio-only.mp4": audio_only_mp4(0.6),
            "wav": wav_bytes(np.sin(np.arange(12000) / 7.0) * 0.4, 16000)}


def decoder_for(builder):
    return DocumentDecoder(builder.vocabulary, builder.tokenizers, builder.text_tokenizer)


def test_captioned_image_keeps_caption_and_image(builder, codecs, media):
    members = {"jpg": media["jpg"], "txt": b"a red circle \xe2\x80\x94 on blue\n",
               "json": json.dumps({"caption": "a red circle — on blue", "text": "second caption", "id": 3}).encode()}
    doc = builder.build(members)
    assert doc.template == "caption-then-image" and doc.modality == "image"
    assert doc.parts == ("text:txt", "text:json.text", "image:jpg")  # the JSON caption equal to .txt is kept once
    assert sum(doc.part_tokens) + 2 == doc.tokens.size
    decoded = decoder_for(builder).decode(doc.tokens)
    assert decoded[:2] == [("text", "a red circle — on blue"), ("text", "second caption")]
    assert decoded[2] == ("image", codecs["image"].to_file(codecs["image"].encode(media["jpg"]).tokens))
    assert doc.source_bytes == sum(len(v) for v in members.values())


def test_video_with_sound_gives_video_and_audio_parts(builder, codecs, media):
    doc = builder.build({"mp4": media["mp4"], "txt": b"bars and a tone"})
    assert doc.template == "video-with-audio" and doc.parts == ("video:mp4", "audio:mp4", "text:txt")
    parts = dict(decoder_for(builder).parts(doc.tokens)[:2])
    assert np.array_equal(parts["video"], codecs["video"].encode(media["mp4"]).tokens)
    clip = OpusTokenizer(max_seconds=codecs["video"].seconds).encode(media["mp4"])  # the sound of the same clip
    assert clip.meta["duration_s"] == codecs["video"].seconds < OpusTokenizer().encode(media["mp4"]).meta["duration_s"]
    assert np.array_equal(parts["audio"], clip.tokens) and builder.tokenizers["audio"].max_seconds is None
    h264 = decoder_for(builder).content("video", parts["video"])
    assert h264 == codecs["video"].to_annexb(media["mp4"])[0]
    assert decoder_for(builder).content("audio", parts["audio"]).startswith(b"OggS")
    silent = builder.build({"mp4": media["silent.mp4"]})
    assert silent.parts == ("video:mp4",)


def test_audio_only_mp4_and_text_only_samples_become_documents(builder, codecs, media):
    doc = builder.build({"mp4": media["audio-only.mp4"], "json": b'{"transcript": "play seven"}'})
    assert doc.template == "audio-with-transcript" and doc.parts == ("audio:mp4", "text:json.transcript")
    (_, audio), (_, text) = decoder_for(builder).parts(doc.tokens)
    assert np.array_equal(audio, codecs["audio"].encode(media["audio-only.mp4"]).tokens)
    text_doc = builder.build({"txt": b"just words", "cls": b"7"})
    assert text_doc.template == "text-only" and decoder_for(builder).decode(text_doc.tokens) == [("text", "just words")]


def test_templates_order_require_and_drop(builder, media, tmp_path):
    members = {"jpg": media["jpg"], "txt": b"caption", "wav": media["wav"]}
    auto = builder.build(members)
    assert [p.split(":")[0] for p in auto.parts] == ["text", "image", "audio"]  # unlisted kinds appended
    flipped = DocumentBuilder(builder.vocabulary, builder.tokenizers, builder.text_tokenizer,
                              BUILTIN_TEMPLATES["image-then-caption"]).build(members)
    assert [p.split(":")[0] for p in flipped.parts] == ["image", "text", "audio"]
    (tmp_path / "t.yaml").write_text("name: pictures\nparts: [image]\nrequired: [text]\nothers: drop\n")
    mine = load_template(str(tmp_path / "t.yaml"))
    assert mine == Template("pictures", ("image",), ("text",), "drop") == resolve_template(str(tmp_path / "t.yaml"))
    strict = DocumentBuilder(builder.vocabulary, builder.tokenizers, builder.text_tokenizer, mine)
    assert strict.build(members).parts == ("image:jpg",)
    with pytest.raises(NotKept, match="template pictures: no text part"):
        strict.build({"jpg": media["jpg"]})
    (tmp_path / "bad.json").write_text(json.dumps({"parts": ["text", "smell"]}))
    with pytest.raises(ValueError, match="unknown part kinds"):
        load_template(str(tmp_path / "bad.json"))


def test_samples_with_an_unused_modality_or_nothing_to_tokenize(builder, media):
    images_only = DocumentBuilder(builder.vocabulary, {"image": builder.tokenizers["image"]}, builder.text_tokenizer)
    with pytest.raises(NotKept, match="no audio tokenizer"):
        images_only.build({"wav": media["wav"], "txt": b"x"})
    with pytest.raises(NotKept, match="audio-only video member and no audio tokenizer"):
        DocumentBuilder(builder.vocabulary, {"video": builder.tokenizers["video"]},
                        builder.text_tokenizer).build({"mp4": media["audio-only.mp4"]})
    with pytest.raises(ValueError, match="nothing to tokenize"):
        builder.build({"cls": b"1", "json": b"not json"})
    assert captions({"en.txt": b" hi ", "json": b'{"caption": "hi", "transcript": 5}'})[0].text == "hi"


def read_rows(out):
    return [r for f in sorted(glob.glob(f"{out}/documents/*.parquet")) for r in pq.read_table(f).to_pylist()]


def sample_members(shards):
    samples = {}
    for path in shards:
        with tarfile.open(path) as tar:
            for info in tar:
                key, ext = info.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_sample_shards(str(tmp_path_factory.mktemp("samples")), num_shards=2, samples_per_shard=8, seed=11)


@pytest.fixture(scope="module")
def corpus(shards, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus") / "out")
    summary = build_corpus.run(["--input", *shards["shards"], "--output", out, "--no-report"])
    return out, summary


def test_every_member_of_every_kept_sample_is_in_its_document(shards, corpus):
    from operators.tokenizers.registry import DEFAULT_TOKENIZER_FOR_MODALITY, build_tokenizer

    out, summary = corpus
    vocab = Vocabulary.from_json(json.load(open(f"{out}/__vocab.json")))
    tokenizers = {m: build_tokenizer(n) for m, n in DEFAULT_TOKENIZER_FOR_MODALITY.items()}
    assert {r.tokenizer: r.version for r in vocab.ranges if r.kind != "text"} == \
        {t.name: t.version for t in tokenizers.values()}
    decoder = DocumentDecoder(vocab, tokenizers, ByteTextTokenizer())
    members = sample_members(shards["shards"])
    rows = read_rows(out)
    assert {r["key"] for r in rows} == set(shards["kinds"]) - set(shards["broken"]) - set(shards["duplicates"])
    assert summary["filtered_by_reason"] == {"exact duplicate": len(shards["duplicates"])}
    for row in rows:
        sample = members[row["key"]]
        parts = decoder.parts(np.array(row["tokens"]))
        assert [k for k, _ in parts] == [p.split(":")[0] for p in row["parts"]]
        texts = [decoder.content(k, t) for k, t in parts if k == "text"]
        assert texts == [c.text for c in captions(sample)] and texts
        media = [(k, t) for k, t in parts if k != "text"]
        expected = []
        for ext, payload in sorted(sample.items()):
            modality = modality_of(ext)
            if modality == "video" and shards["kinds"][row["key"]] == "audio-mp4":
                expected.append(("audio", tokenizers["audio"].encode(payload).tokens))
            elif modality == "video":
                expected += [("video", tokenizers["video"].encode(payload).tokens),
                             ("audio", tokenizers["audio"].encode(payload).tokens)]  # the samples' videos have sound
            elif modality is not None:
                expected.append((modality, tokenizers[modality].encode(payload).tokens))
        assert [k for k, _ in media] == [k for k, _ in expected], row["key"]
        for (_, got), (_, want) in zip(media, expected):
            assert np.array_equal(got, want), row["key"]
    assert summary["documents"] == len(rows) and summary["parts_by_kind"]["audio"] >= 2
    assert summary["records"] == summary["rows"] + summary["dead_letters"] + summary.get("filtered", 0)
    for path in glob.glob(f"{out}/__manifests/*.json"):
        m = json.load(open(path))
        assert m["records"] == m["rows"] + m["dead_letters"] + m["filtered"]


def test_two_workers_and_a_text_tokenizer_give_identical_documents(shards, tmp_path):
    path = tiny_tokenizer_json(tmp_path / "tokenizer.json", [c.text for s in sample_members(shards["shards"]).values()
                                                           for c in captions(s)])
    (tmp_path / "t.json").write_text(json.dumps({"name": "image-first", "parts": ["image", "text"]}))
    flags = ["--input", *shards["shards"], "--no-report", "--text-tokenizer", path, "--template",
             str(tmp_path / "t.json"), "--modalities", "image"]
    build_corpus.run([*flags, "--output", str(tmp_path / "one")])
    summary = build_corpus.run([*flags, "--output", str(tmp_path / "two"), "--direct_running_mode=multi_processing",
                                "--direct_num_workers=2"])
    one, two = read_rows(tmp_path / "one"), read_rows(tmp_path / "two")
    assert one == two and one
    assert open(tmp_path / "one" / "__vocab.json", "rb").read() == open(tmp_path / "two" / "__vocab.json", "rb").read()
    assert {r["template"] for r in one} == {"image-first"}
    vocab = Vocabulary.from_json(json.load(open(tmp_path / "one" / "__vocab.json")))
    text = build_text_tokenizer(path)
    assert vocab.range_for("text").tokenizer == text.name and vocab.range_for("text").size == text.size
    members = sample_members(shards["shards"])
    for row in one:
        parts = vocab.split(np.array(row["tokens"]))
        assert [text.decode(t) for k, t in parts if k == "text"] == [c.text for c in captions(members[row["key"]])]
    by_extension = [modality_of(ext) for key in shards["kinds"] for ext in members.get(key, {})]
    assert summary["filtered_by_reason"] == {  # samples with a .mp4 or .wav member, without those tokenizers
        **{f"no {m} tokenizer in use": by_extension.count(m) for m in ("audio", "video")},
        "exact duplicate": len(shards["duplicates"])}
    assert summary["records"] == summary["rows"] + summary["dead_letters"] + summary["filtered"]


def test_an_output_built_with_another_vocabulary_is_refused(shards, corpus, tmp_path):
    from pipelines.common import ConfigError

    out, _ = corpus
    with pytest.raises(ConfigError, match="holds another vocabulary"):
        build_corpus.run(["--input", *shards["shards"], "--output", out, "--tokenizer-option", "jpeg.size=128",
                          "--no-report"])


def test_multi_codebook_audio_round_trips_through_the_job(shards, tmp_path):
    from operators.tokenizers.semantic_audio import SemanticAudioTokenizer

    out = str(tmp_path / "o")
    summary = build_corpus.run(["--input", *shards["shards"], "--output", out, "--no-report",
                                "--tokenizer", "jpeg,semantic-audio"])
    vocab = Vocabulary.from_json(json.load(open(f"{out}/__vocab.json")))
    audio = SemanticAudioTokenizer()
    assert vocab.range_for("audio").codebooks == audio.codebook_sizes() and vocab.range_for("audio").version == audio.version
    members = sample_members(shards["shards"])
    checked = 0
    for row in read_rows(out):
        for kind, tokens in vocab.split(np.array(row["tokens"])):
            if kind == "audio":  # .wav members and the audio-only .mp4s (found by probing: no video tokenizer)
                (payload,) = [p for ext, p in members[row["key"]].items() if modality_of(ext) in ("audio", "video")]
                want = audio.encode(payload).tokens
                assert tokens.shape == want.shape and want.shape[1] == len(audio.codebook_sizes())
                assert np.array_equal(tokens, want)
                checked += 1
    assert checked == sum(kind in ("audio", "audio-mp4") for kind in shards["kinds"].values())
    assert summary["filtered_by_reason"]["no video tokenizer in use"] == list(shards["kinds"].values()).count("video")
