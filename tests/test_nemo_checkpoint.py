"""Loading NeMo ``.nemo`` archives built here in NeMo's format (no real checkpoints, no network)."""

import io
import os
import pickle
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from operators.asr.config import RNNTConfig
from operators.asr.model import random_model, small_config
from operators.asr.nemo_checkpoint import NemoCheckpointError, load_nemo, model_config_to_nemo, save_nemo
from operators.asr.streaming import StreamingASR

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def spm_bytes():
    import sentencepiece

    sentences = ["turn the lights on", "turn the music off", "call mom", "what time is it", "seven four two"] * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=30, model_type="unigram",
        bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=False, minloglevel=2,
    )
    return model.getvalue()


def _write_archive(path, members, gz=False):
    """A tar laid out like NeMo's SaveRestoreConnector (members under ``./``)."""
    with tarfile.open(path, "w:gz" if gz else "w:") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _nemo_members(model, cfg, extra_state=None, tokenizer=None):
    state = dict(model.state_dict())
    # NeMo checkpoints also hold the preprocessor's buffers; the loader must ignore them.
    state["preprocessor.featurizer.window"] = torch.hann_window(400)
    state["preprocessor.featurizer.fb"] = torch.rand(1, 80, 257)
    state.update(extra_state or {})
    weights = io.BytesIO()
    torch.save(state, weights)
    members = {"./model_config.yaml": yaml.safe_dump(cfg).encode(), "./model_weights.ckpt": weights.getvalue()}
    if tokenizer is not None:
        members["./1a2b3c_tokenizer.model"] = tokenizer
        members["./1a2b3c_vocab.txt"] = b"unused\n"
    return members


def _hybrid(spm_vocab_size, seed=0):
    config = replace(small_config(), vocab_size=spm_vocab_size,
                     rnnt=RNNTConfig(pred_hidden=32, pred_rnn_layers=1, joint_hidden=24))
    return random_model(config, seed=seed)


def test_loads_hybrid_rnnt_ctc_bpe_archive(tmp_path, spm_bytes):
    from operators.asr.vocabulary import SentencePieceVocabulary

    vocab = SentencePieceVocabulary(spm_bytes)
    model = _hybrid(vocab.size)
    cfg = model_config_to_nemo(model.config, tokenizer_name="1a2b3c_tokenizer.model")
    cfg["tokenizer"]["vocab_path"] = "nemo:1a2b3c_vocab.txt"
    path = str(tmp_path / "hybrid.nemo")
    _write_archive(path, _nemo_members(model, cfg, tokenizer=spm_bytes))

    loaded = load_nemo(path, att_context=(70, 6))
    assert loaded.decoder == "rnnt" and loaded.att_context == (70, 6)
    assert loaded.config.rnnt.joint_dropout  # joint_net.2 in the keys → [act, dropout, linear]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.vocabulary.decode(vocab.encode("call mom")) == "call mom"
    original = StreamingASR(model, vocab, (70, 6))
    features = torch.randn(2, 80, 240, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([240, 123])
    assert loaded.transcribe_features(features, lengths) == original.transcribe_features(features, lengths)
    ctc = load_nemo(path, decoder="ctc")
    assert ctc.decoder == "ctc"
    assert ctc.transcribe_features_streaming(features, lengths) == ctc.transcribe_features(features, lengths)


def test_loads_gzipped_char_ctc_archive_and_round_trips_save(tmp_path):
    labels = list(" abcdefghijk")
    model = random_model(replace(small_config(), vocab_size=len(labels)), seed=2)
    cfg = model_config_to_nemo(model.config, labels=labels)
    path = str(tmp_path / "ctc.nemo")
    _write_archive(path, _nemo_members(model, cfg), gz=True)
    loaded = load_nemo(path)
    assert loaded.decoder == "ctc" and loaded.vocabulary.labels == labels
    assert loaded.config.encoder == model.config.encoder and loaded.config.mel == model.config.mel

    saved = str(tmp_path / "saved.nemo")
    save_nemo(saved, loaded.model, labels=labels)
    again = load_nemo(saved)
    audio = [np.sin(np.linspace(0, 900, 16000)).astype(np.float32), np.zeros(7000, np.float32)]
    assert again.transcribe(audio) == loaded.transcribe(audio)
    assert again.transcribe(audio, streaming=True) == loaded.transcribe(audio)


@pytest.mark.parametrize(
    "section,field,value",
    [
        ("encoder", "subsampling", "striding"),
        ("encoder", "causal_downsampling", False),
        ("encoder", "self_attention_model", "abs_pos"),
        ("encoder", "conv_context_size", [4, 4]),
        ("encoder", "att_context_style", "chunked_limited_with_rc"),
        ("preprocessor", "normalize", "per_feature"),
        ("preprocessor", "window", "hamming"),
    ],
)
def test_unsupported_config_names_the_field(tmp_path, section, field, value):
    labels = list(" abcdefghijk")
    model = random_model(replace(small_config(), vocab_size=len(labels)))
    cfg = model_config_to_nemo(model.config, labels=labels)
    cfg[section][field] = value
    path = str(tmp_path / "bad.nemo")
    _write_archive(path, _nemo_members(model, cfg))
    with pytest.raises(NemoCheckpointError, match=f"{section}.{field}"):
        load_nemo(path)


def test_mismatched_weights_are_reported(tmp_path):
    labels = list(" abcdefghijk")
    model = random_model(replace(small_config(), vocab_size=len(labels)))
    cfg = model_config_to_nemo(model.config, labels=labels)
    cfg["encoder"]["n_layers"] = 3
    path = str(tmp_path / "mismatch.nemo")
    _write_archive(path, _nemo_members(model, cfg))
    with pytest.raises(NemoCheckpointError, match="missing .*encoder.layers.2"):
        load_nemo(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_archives_are_refused(tmp_path):
    labels = list(" abcdefghijk")
    model = random_model(replace(small_config(), vocab_size=len(labels)))
    cfg = model_config_to_nemo(model.config, labels=labels)
    good = _nemo_members(model, cfg)
    for name in ("../escape.txt", "/etc/evil", "./a/../../escape"):
        path = str(tmp_path / "escape.nemo")
        _write_archive(path, {**good, name: b"x"})
        with pytest.raises(NemoCheckpointError, match="escapes"):
            load_nemo(path)
    link_path = str(tmp_path / "link.nemo")
    _write_archive(link_path, good)
    with tarfile.open(link_path, "a:") as archive:
        info = tarfile.TarInfo("./tokenizer.model")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(NemoCheckpointError, match="link"):
        load_nemo(link_path)
    pickled = str(tmp_path / "pickle.nemo")
    _write_archive(pickled, {**good, "./model_weights.ckpt": pickle.dumps({"x": _Payload()}, protocol=2)})
    with pytest.raises(NemoCheckpointError, match="state dict"):
        load_nemo(pickled)
    missing = str(tmp_path / "missing.nemo")
    _write_archive(missing, {"./model_config.yaml": good["./model_config.yaml"]})
    with pytest.raises(NemoCheckpointError, match="model_weights.ckpt"):
        load_nemo(missing)


def test_nemo_key_names(spm_bytes):
    from operators.asr.vocabulary import SentencePieceVocabulary

    keys = set(_hybrid(SentencePieceVocabulary(spm_bytes).size).state_dict())
    for key in [
        "encoder.pre_encode.conv.0.weight", "encoder.pre_encode.conv.2.weight", "encoder.pre_encode.conv.3.bias",
        "encoder.pre_encode.conv.5.weight", "encoder.pre_encode.conv.6.bias", "encoder.pre_encode.out.weight",
        "encoder.layers.1.self_attn.linear_pos.weight", "encoder.layers.1.self_attn.pos_bias_u",
        "encoder.layers.0.conv.batch_norm.weight", "encoder.layers.0.conv.depthwise_conv.weight",
        "encoder.layers.0.norm_out.bias", "decoder.prediction.embed.weight",
        "decoder.prediction.dec_rnn.lstm.weight_ih_l0", "joint.pred.weight", "joint.enc.weight",
        "joint.joint_net.2.weight", "ctc_decoder.decoder_layers.0.weight",
    ]:
        assert key in keys, key
    assert "encoder.layers.0.self_attn.linear_pos.bias" not in keys


def _char_archive_parts():
    labels = list(" abcdefghijk")
    model = random_model(replace(small_config(), vocab_size=len(labels)))
    return model, model_config_to_nemo(model.config, labels=labels)


def _set(cfg, dotted, value):
    *parents, last = dotted.split(".")
    for name in parents:
        cfg = cfg[name]
    if value is _DELETE:
        del cfg[last]
    else:
        cfg[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("encoder.d_model", _DELETE, "lacks the required field 'd_model'"),
        ("encoder", "not a mapping", "malformed checkpoint \\(AttributeError"),
        ("encoder.n_layers", 10**9, "encoder.n_layers = 1000000000"),
        ("encoder.n_layers", "many", "malformed checkpoint \\(ValueError"),
        ("encoder.d_model", 10**6, "weight encoder.* has shape"),
        ("encoder.n_heads", 0, "malformed checkpoint|has shape"),
        ("preprocessor.window_size", 0, "preprocessor.window_size"),
        ("preprocessor.n_fft", 1 << 30, "preprocessor.n_fft"),
        ("preprocessor.features", 10**6, "preprocessor.features"),
        ("labels", [], "neither tokenizer nor labels"),
    ],
)
def test_every_config_failure_is_a_checkpoint_error(tmp_path, field, value, message):
    import time
    import tracemalloc

    model, cfg = _char_archive_parts()
    _set(cfg, field, value)
    if field == "labels":
        cfg["decoder"]["vocabulary"] = []
    path = str(tmp_path / "bad.nemo")
    _write_archive(path, _nemo_members(model, cfg))
    began = time.monotonic()
    tracemalloc.start()
    with pytest.raises(NemoCheckpointError, match=message) as caught:
        load_nemo(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(caught.value).startswith(path)
    assert time.monotonic() - began < 5 and peak < 64 << 20  # a declared huge model is never allocated


def test_hostile_archive_contents_are_checkpoint_errors(tmp_path):
    model, cfg = _char_archive_parts()
    good = _nemo_members(model, cfg)
    marker = tmp_path / "pwned"
    tagged = f'x: !!python/object/apply:os.system ["touch {marker}"]\n'.encode()
    cases = {
        "python tag": {**good, "./model_config.yaml": tagged},
        "not utf-8": {**good, "./model_config.yaml": b"\xff\xfe\x00bad"},
        "list weights": {**good, "./model_weights.ckpt": _saved([torch.zeros(2)])},
        "non-tensor values": {**good, "./model_weights.ckpt": _saved({"encoder.x": 3})},
        "bad shape": {**good, "./model_weights.ckpt": _saved({**model.state_dict(),
                                                              "decoder.decoder_layers.0.bias": torch.zeros(3)})},
    }
    expected = {
        "python tag": "not plain UTF-8 YAML", "not utf-8": "not plain UTF-8 YAML",
        "list weights": "state dict of named tensors", "non-tensor values": "state dict of named tensors",
        "bad shape": "decoder.decoder_layers.0.bias has shape",
    }
    for name, members in cases.items():
        path = str(tmp_path / f"{name}.nemo")
        _write_archive(path, members)
        with pytest.raises(NemoCheckpointError, match=expected[name]):
            load_nemo(path)
    assert not marker.exists()


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_unreadable_archives_and_budgets_are_checkpoint_errors(tmp_path, spm_bytes):
    model, cfg = _char_archive_parts()
    good = _nemo_members(model, cfg)
    garbage = tmp_path / "garbage.nemo"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.nemo"
    _write_archive(str(truncated), good)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    for path in (garbage, truncated):
        with pytest.raises(NemoCheckpointError, match="not a readable .nemo tar archive|truncated"):
            load_nemo(str(path))
    path = str(tmp_path / "good.nemo")
    _write_archive(path, good)
    with pytest.raises(NemoCheckpointError, match="budget member_bytes=1000 exceeded"):
        load_nemo(path, member_bytes=1000)
    tokenizer_cfg = {**cfg, "tokenizer": {"type": "bpe", "model_path": "nemo:1a2b3c_tokenizer.model"}}
    _write_archive(path, _nemo_members(model, tokenizer_cfg, tokenizer=b"not a sentencepiece model"))
    with pytest.raises(NemoCheckpointError, match="not a SentencePiece model"):
        load_nemo(path)
