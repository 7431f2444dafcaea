"""Reads and writes NVIDIA NeMo ``.nemo`` archives of streaming FastConformer models (no Beam import).

A ``.nemo`` file is a tar (plain or gzip) holding ``model_config.yaml``, ``model_weights.ckpt`` (a
``torch.save``'d state dict) and artifacts such as ``<hash>_tokenizer.model``, referenced from the
config as ``nemo:<hash>_tokenizer.model`` (NeMo's ``SaveRestoreConnector``). Supported: CTC models
(``EncDecCTCModel``/``EncDecCTCModelBPE``) and hybrid RNNT/CTC models
(``EncDecHybridRNNTCTC[BPE]Model``) whose encoder is a causal ``dw_striding`` ×8 ``rel_pos``
FastConformer with causal convolutions, with a SentencePiece (``bpe``) tokenizer or char labels.

Safety: members are read into memory, never extracted; absolute names, ``..`` components, links
and special files are rejected; weights load with ``torch.load(weights_only=True)``. Anything
unsupported fails with a ``NemoCheckpointError`` naming the config field.
"""

import hashlib
import io
import os
import posixpath
import tarfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml

from operators.asr.frontend import MelConfig
from operators.asr.streaming import (
    CharVocabulary,
    EncoderConfig,
    FastConformerASR,
    ModelConfig,
    RNNTConfig,
    SentencePieceVocabulary,
    StreamingASR,
)
from operators.asset_paths import asset_path

__all__ = [
    "EMBEDDED_MODEL", "NemoCheckpointError", "read_nemo_archive", "load_nemo", "save_nemo", "model_config_to_nemo",
]

EMBEDDED_MODEL = asset_path("asr_default.nemo")
"""The default model, trained by ``mediabeam train-asr`` on synthetic speech (digits, commands)."""

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"
MAX_MEMBER_BYTES = 2 << 30


class NemoCheckpointError(ValueError):
    """A ``.nemo`` archive that is unsafe, malformed or uses an unsupported configuration."""


def read_nemo_archive(path: str) -> Dict[str, bytes]:
    """Returns ``{member name: bytes}`` of a ``.nemo`` tar, refusing unsafe members.

    Names are normalised (``./model_config.yaml`` → ``model_config.yaml``).
    """
    members: Dict[str, bytes] = {}
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as error:
        raise NemoCheckpointError(f"{path}: not a readable .nemo tar archive ({error})") from error
    with archive:
        for member in archive:
            name = member.name
            normalised = posixpath.normpath(name)
            if name.startswith("/") or normalised == ".." or normalised.startswith("../") or "\\" in name:
                raise NemoCheckpointError(f"{path}: member {name!r} escapes the archive; refusing to load")
            if member.isdir():
                continue
            if not member.isfile():
                raise NemoCheckpointError(
                    f"{path}: member {name!r} is a link or special file; .nemo archives hold plain files only"
                )
            if member.size > MAX_MEMBER_BYTES:
                raise NemoCheckpointError(f"{path}: member {name!r} is larger than {MAX_MEMBER_BYTES} bytes")
            handle = archive.extractfile(member)
            members[normalised] = handle.read() if handle is not None else b""
    for required in (CONFIG_NAME, WEIGHTS_NAME):
        if required not in members:
            raise NemoCheckpointError(f"{path}: archive has no {required} (members: {sorted(members)})")
    return members


def _require(condition: bool, field: str, value: Any, supported: str) -> None:
    if not condition:
        raise NemoCheckpointError(f"unsupported configuration: {field} = {value!r} (supported: {supported})")


def _context_sizes(value: Any) -> Tuple[Tuple[int, int], ...]:
    if not value:
        return ((-1, -1),)
    if isinstance(value[0], int):
        value = [value]
    return tuple((int(pair[0]), int(pair[1])) for pair in value)


def _encoder_config(cfg: Dict[str, Any]) -> EncoderConfig:
    enc = cfg.get("encoder") or {}
    _require(str(enc.get("_target_", "ConformerEncoder")).endswith("ConformerEncoder"), "encoder._target_",
             enc.get("_target_"), "ConformerEncoder")
    _require(enc.get("subsampling", "striding") == "dw_striding", "encoder.subsampling", enc.get("subsampling"),
             "dw_striding")
    _require(int(enc.get("subsampling_factor", 4)) == 8, "encoder.subsampling_factor",
             enc.get("subsampling_factor"), "8")
    _require(bool(enc.get("causal_downsampling", False)), "encoder.causal_downsampling",
             enc.get("causal_downsampling"), "true")
    _require(enc.get("self_attention_model", "rel_pos") == "rel_pos", "encoder.self_attention_model",
             enc.get("self_attention_model"), "rel_pos")
    _require(bool(enc.get("untie_biases", True)), "encoder.untie_biases", enc.get("untie_biases"), "true")
    _require(int(enc.get("feat_out", -1)) in (-1, int(enc["d_model"])), "encoder.feat_out", enc.get("feat_out"),
             "-1")
    _require(not enc.get("reduction"), "encoder.reduction", enc.get("reduction"), "null")
    _require(int(enc.get("global_tokens", 0)) == 0, "encoder.global_tokens", enc.get("global_tokens"), "0")
    _require(bool(enc.get("use_bias", True)), "encoder.use_bias", enc.get("use_bias"), "true")
    kernel = int(enc.get("conv_kernel_size", 31))
    conv_context = enc.get("conv_context_size")
    _require(conv_context == "causal" or (isinstance(conv_context, (list, tuple)) and list(conv_context) ==
             [kernel - 1, 0]), "encoder.conv_context_size", conv_context, "causal")
    norm = enc.get("conv_norm_type", "batch_norm")
    _require(norm in ("layer_norm", "batch_norm"), "encoder.conv_norm_type", norm, "layer_norm, batch_norm")
    style = enc.get("att_context_style", "regular")
    _require(style in ("chunked_limited", "regular"), "encoder.att_context_style", style,
             "chunked_limited, regular")
    channels = int(enc.get("subsampling_conv_channels", -1))
    return EncoderConfig(
        feat_in=int(enc["feat_in"]),
        n_layers=int(enc["n_layers"]),
        d_model=int(enc["d_model"]),
        n_heads=int(enc.get("n_heads", 4)),
        ff_expansion_factor=int(enc.get("ff_expansion_factor", 4)),
        conv_kernel_size=kernel,
        conv_norm_type=norm,
        subsampling_conv_channels=channels if channels > 0 else int(enc["d_model"]),
        att_context_size=_context_sizes(enc.get("att_context_size")),
        att_context_style=style,
        xscaling=bool(enc.get("xscaling", True)),
    )


def _mel_config(cfg: Dict[str, Any]) -> MelConfig:
    pre = cfg.get("preprocessor") or {}
    rate = int(pre.get("sample_rate", cfg.get("sample_rate", 16000)))
    _require(pre.get("normalize", "per_feature") in ("NA", None, "none", False), "preprocessor.normalize",
             pre.get("normalize"), "NA (streaming models use no per-utterance normalisation)")
    _require(pre.get("window", "hann") == "hann", "preprocessor.window", pre.get("window"), "hann")
    _require(int(pre.get("frame_splicing", 1)) == 1, "preprocessor.frame_splicing", pre.get("frame_splicing"), "1")
    _require(bool(pre.get("log", True)), "preprocessor.log", pre.get("log"), "true")
    _require(pre.get("log_zero_guard_type", "add") == "add", "preprocessor.log_zero_guard_type",
             pre.get("log_zero_guard_type"), "add")
    _require(float(pre.get("mag_power", 2.0)) == 2.0, "preprocessor.mag_power", pre.get("mag_power"), "2.0")
    _require(pre.get("mel_norm", "slaney") == "slaney", "preprocessor.mel_norm", pre.get("mel_norm"), "slaney")
    _require(not pre.get("exact_pad", False), "preprocessor.exact_pad", pre.get("exact_pad"), "false")
    guard = pre.get("log_zero_guard_value", 2.0**-24)
    _require(isinstance(guard, (int, float)), "preprocessor.log_zero_guard_value", guard, "a number")
    win = int(round(float(pre.get("window_size", 0.02)) * rate))
    return MelConfig(
        sample_rate=rate,
        n_mels=int(pre.get("features", 64)),
        win_length=win,
        hop_length=int(round(float(pre.get("window_stride", 0.01)) * rate)),
        n_fft=int(pre.get("n_fft") or 2 ** (win - 1).bit_length()),
        preemph=float(pre.get("preemph", 0.97) or 0.0),
        log_zero_guard=float(guard),
        lowfreq=float(pre.get("lowfreq", 0.0) or 0.0),
        highfreq=float(pre.get("highfreq", 0.0) or 0.0),
    )


def _vocabulary(cfg: Dict[str, Any], members: Dict[str, bytes]):
    tokenizer = cfg.get("tokenizer")
    if tokenizer:
        _require(tokenizer.get("type") == "bpe", "tokenizer.type", tokenizer.get("type"), "bpe (SentencePiece)")
        model_path = str(tokenizer.get("model_path", ""))
        base = posixpath.basename(model_path.split("nemo:", 1)[-1])
        matches = [name for name in members if posixpath.basename(name) == base]
        if not matches:
            raise NemoCheckpointError(f"tokenizer.model_path {model_path!r} is not in the archive")
        return SentencePieceVocabulary(members[matches[0]])
    labels = cfg.get("labels") or (cfg.get("decoder") or {}).get("vocabulary")
    if not labels:
        raise NemoCheckpointError("config has neither tokenizer nor labels / decoder.vocabulary")
    return CharVocabulary(labels)


def _state_dict(members: Dict[str, bytes]) -> Dict[str, torch.Tensor]:
    try:
        loaded = torch.load(io.BytesIO(members[WEIGHTS_NAME]), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError/RuntimeError for foreign pickles
        raise NemoCheckpointError(f"{WEIGHTS_NAME} is not a plain tensor state dict ({error})") from error
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    return {key: value for key, value in loaded.items() if not key.startswith("preprocessor.")}


def _model_config(cfg: Dict[str, Any], state: Dict[str, torch.Tensor], vocab_size: int) -> ModelConfig:
    encoder = _encoder_config(cfg)
    mel = _mel_config(cfg)
    _require(mel.n_mels == encoder.feat_in, "preprocessor.features", mel.n_mels, f"encoder.feat_in = {encoder.feat_in}")
    rnnt = None
    decoder_cfg = cfg.get("decoder") or {}
    if "RNNTDecoder" in str(decoder_cfg.get("_target_", "")):
        prednet = decoder_cfg.get("prednet") or {}
        joint = (cfg.get("joint") or {}).get("jointnet") or {}
        _require(decoder_cfg.get("blank_as_pad", True), "decoder.blank_as_pad", decoder_cfg.get("blank_as_pad"),
                 "true")
        _require(not decoder_cfg.get("normalization_mode"), "decoder.normalization_mode",
                 decoder_cfg.get("normalization_mode"), "null")
        _require(int(prednet.get("proj_size", 0) or 0) == 0, "decoder.prednet.proj_size", prednet.get("proj_size"),
                 "0")
        _require("aux_ctc" in cfg, "aux_ctc", None, "hybrid RNNT/CTC models (pure RNNT models are not supported)")
        greedy = ((cfg.get("decoding") or {}).get("greedy") or {})
        rnnt = RNNTConfig(
            pred_hidden=int(prednet["pred_hidden"]),
            pred_rnn_layers=int(prednet.get("pred_rnn_layers", 1)),
            joint_hidden=int(joint["joint_hidden"]),
            joint_activation=str(joint.get("activation", "relu")).lower(),
            joint_dropout="joint.joint_net.2.weight" in state,
            max_symbols=int(greedy.get("max_symbols", 10) or 10),
        )
        _require(rnnt.joint_activation in ("relu", "tanh", "sigmoid"), "joint.jointnet.activation",
                 rnnt.joint_activation, "relu, tanh, sigmoid")
    else:
        _require("ConvASRDecoder" in str(decoder_cfg.get("_target_", "ConvASRDecoder")), "decoder._target_",
                 decoder_cfg.get("_target_"), "ConvASRDecoder, RNNTDecoder")
    return ModelConfig(encoder=encoder, vocab_size=vocab_size, rnnt=rnnt, mel=mel)


def load_nemo(path: str, att_context: Optional[Sequence[int]] = None, decoder: Optional[str] = None) -> StreamingASR:
    """Loads a ``.nemo`` archive into a :class:`StreamingASR` operator (float32, eval mode).

    Raises:
        NemoCheckpointError: unsafe archive, unsupported configuration (the message names the
            field) or weights that do not match the configuration.
    """
    members = read_nemo_archive(path)
    cfg = yaml.safe_load(members[CONFIG_NAME].decode("utf-8"))
    if not isinstance(cfg, dict):
        raise NemoCheckpointError(f"{CONFIG_NAME} is not a mapping")
    vocabulary = _vocabulary(cfg, members)
    state = _state_dict(members)
    config = _model_config(cfg, state, vocabulary.size)
    model = FastConformerASR(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise NemoCheckpointError(
            f"weights do not match the config: missing {missing[:8]}{'…' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'…' if len(unexpected) > 8 else ''}"
        )
    for key, value in model.state_dict().items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise NemoCheckpointError(
                f"weight {key} has shape {tuple(state[key].shape)}, config implies {tuple(value.shape)}"
            )
    model.load_state_dict({key: value.to(model.state_dict()[key].dtype) for key, value in state.items()})
    return StreamingASR(model, vocabulary, att_context, decoder)


def model_config_to_nemo(config: ModelConfig, labels: Optional[List[str]] = None,
                         tokenizer_name: Optional[str] = None) -> Dict[str, Any]:
    """NeMo ``model_config.yaml`` content for a model (CTC or hybrid RNNT/CTC)."""
    enc, mel = config.encoder, config.mel
    vocabulary = list(labels) if labels else []
    cfg: Dict[str, Any] = {
        "sample_rate": mel.sample_rate,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": mel.sample_rate,
            "normalize": "NA",
            "window_size": mel.win_length / mel.sample_rate,
            "window_stride": mel.hop_length / mel.sample_rate,
            "window": "hann",
            "features": mel.n_mels,
            "n_fft": mel.n_fft,
            "log": True,
            "frame_splicing": 1,
            "dither": 1.0e-05,
            "pad_to": 0,
            "pad_value": 0.0,
            "preemph": mel.preemph,
            "log_zero_guard_value": mel.log_zero_guard,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": enc.feat_in,
            "feat_out": -1,
            "n_layers": enc.n_layers,
            "d_model": enc.d_model,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": enc.subsampling_conv_channels,
            "causal_downsampling": True,
            "ff_expansion_factor": enc.ff_expansion_factor,
            "self_attention_model": "rel_pos",
            "n_heads": enc.n_heads,
            "att_context_size": [list(pair) for pair in enc.att_context_size],
            "att_context_style": enc.att_context_style,
            "xscaling": enc.xscaling,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": enc.conv_kernel_size,
            "conv_norm_type": enc.conv_norm_type,
            "conv_context_size": "causal",
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
    }
    ctc_decoder = {
        "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
        "feat_in": enc.d_model,
        "num_classes": config.vocab_size,
        "vocabulary": vocabulary,
    }
    bpe = tokenizer_name is not None
    if config.rnnt is None:
        cfg["target"] = (
            "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE" if bpe
            else "nemo.collections.asr.models.ctc_models.EncDecCTCModel"
        )
        cfg["decoder"] = ctc_decoder
    else:
        rnnt = config.rnnt
        cfg["target"] = (
            "nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models.EncDecHybridRNNTCTCBPEModel" if bpe
            else "nemo.collections.asr.models.hybrid_rnnt_ctc_models.EncDecHybridRNNTCTCModel"
        )
        cfg["decoder"] = {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "vocab_size": config.vocab_size,
            "prednet": {"pred_hidden": rnnt.pred_hidden, "pred_rnn_layers": rnnt.pred_rnn_layers, "t_max": None,
                        "dropout": 0.2},
        }
        cfg["joint"] = {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "num_classes": config.vocab_size,
            "vocabulary": vocabulary,
            "jointnet": {"joint_hidden": rnnt.joint_hidden, "activation": rnnt.joint_activation,
                         "dropout": 0.2 if rnnt.joint_dropout else 0.0},
        }
        cfg["decoding"] = {"strategy": "greedy_batch", "greedy": {"max_symbols": rnnt.max_symbols}}
        cfg["aux_ctc"] = {"ctc_loss_weight": 0.3, "decoder": ctc_decoder}
    if bpe:
        cfg["tokenizer"] = {"dir": None, "type": "bpe", "model_path": f"nemo:{tokenizer_name}"}
    else:
        cfg["labels"] = vocabulary
    return cfg


def save_nemo(path: str, model: FastConformerASR, tokenizer_model: Optional[bytes] = None,
              labels: Optional[Sequence[str]] = None, weight_dtype: torch.dtype = torch.float32) -> None:
    """Writes a model as a NeMo-format ``.nemo`` tar (uncompressed, members under ``./``).

    Args:
        path: Output file.
        model: The model; its state dict already uses NeMo's key names.
        tokenizer_model: SentencePiece model bytes (stored as ``<md5>_tokenizer.model``), or None.
        labels: Character labels of a char model (when there is no tokenizer).
        weight_dtype: Floating dtype of the stored weights (float16 halves an embedded model).
    """
    files: Dict[str, bytes] = {}
    tokenizer_name = None
    if tokenizer_model is not None:
        tokenizer_name = f"{hashlib.md5(tokenizer_model).hexdigest()}_tokenizer.model"
        files[tokenizer_name] = tokenizer_model
    cfg = model_config_to_nemo(model.config, list(labels) if labels else None, tokenizer_name)
    files[CONFIG_NAME] = yaml.safe_dump(cfg, sort_keys=False).encode("utf-8")
    state = {key: (value.to(weight_dtype) if value.is_floating_point() else value).contiguous()
             for key, value in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files[WEIGHTS_NAME] = buffer.getvalue()
    with tarfile.open(path, "w:") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
