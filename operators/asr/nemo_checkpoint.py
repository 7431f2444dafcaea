"""Reads and writes NVIDIA NeMo ``.nemo`` archives of streaming FastConformer models (no Beam import).

A ``.nemo`` file is a tar (plain or gzip) holding ``model_config.yaml``, ``model_weights.ckpt`` (a
``torch.save``'d state dict) and artifacts such as ``<hash>_tokenizer.model``, referenced from the
config as ``nemo:<hash>_tokenizer.model`` (NeMo's ``SaveRestoreConnector``). Supported: CTC models
(``EncDecCTCModel``/``EncDecCTCModelBPE``) and hybrid RNNT/CTC models
(``EncDecHybridRNNTCTC[BPE]Model``) whose encoder is a causal ``dw_striding`` ×8 ``rel_pos``
FastConformer with causal convolutions, with a SentencePiece (``bpe``) tokenizer or char labels.

Safety (checkpoints are untrusted): members are read into memory, never extracted, within the
``member_bytes`` budget; absolute names, ``..`` components, links and special files are rejected;
the config is read with ``yaml.safe_load`` (no Python tags) and weights load with
``torch.load(weights_only=True)`` (no pickled code). The model is first built on PyTorch's
``meta`` device (no memory) and its parameter shapes compared with the weights, so a config that
declares a huge model costs nothing. Every failure, whatever its cause, is a
``NemoCheckpointError`` whose message says what is wrong (naming the config field where there is
one), so callers can validate a model before a pipeline starts with one ``except``.
"""

import hashlib
import io
import lzma
import posixpath
import tarfile
import zlib
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml

from operators.asr.config import ModelConfig
from operators.asr.model import FastConformerASR
from operators.asr.nemo_config import NemoCheckpointError, model_config, require
from operators.asr.streaming import StreamingASR
from operators.asr.vocabulary import CharVocabulary, SentencePieceVocabulary
from operators.asset_paths import asset_path
from schemas.budgets import DEFAULT_BUDGETS, BudgetExceeded

__all__ = [
    "EMBEDDED_MODEL", "NemoCheckpointError", "read_nemo_archive", "load_nemo", "save_nemo", "model_config_to_nemo",
]

EMBEDDED_MODEL = asset_path("asr_default.nemo")
"""The default model, trained by ``mediabeam train-asr`` on synthetic speech (digits, commands)."""

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"
MAX_MEMBERS = 1024


def read_nemo_archive(path: str, member_bytes: int = DEFAULT_BUDGETS.member_bytes) -> Dict[str, bytes]:
    """Returns ``{member name: bytes}`` of a ``.nemo`` tar, refusing unsafe members.

    Names are normalised (``./model_config.yaml`` → ``model_config.yaml``).

    Args:
        path: The archive.
        member_bytes: Budget: most bytes read from the archive, all members together.

    Raises:
        NemoCheckpointError: Unreadable, truncated or unsafe archive, or one over the budget.
    """
    try:
        return _read_members(path, member_bytes)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise NemoCheckpointError(f"{path}: not a readable .nemo tar archive ({error})") from error


def _read_members(path: str, member_bytes: int) -> Dict[str, bytes]:
    members: Dict[str, bytes] = {}
    total = 0
    with tarfile.open(path, "r:*") as archive:
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
            total += member.size
            if total > member_bytes:
                exceeded = BudgetExceeded("member_bytes", member_bytes, f"the archive holds more than {total} bytes")
                raise NemoCheckpointError(f"{path}: {exceeded}")
            if len(members) >= MAX_MEMBERS:
                raise NemoCheckpointError(f"{path}: more than {MAX_MEMBERS} members; not a .nemo archive")
            handle = archive.extractfile(member)
            data = handle.read() if handle is not None else b""
            if len(data) != member.size:
                raise NemoCheckpointError(f"{path}: member {name!r} is truncated")
            members[normalised] = data
    for required in (CONFIG_NAME, WEIGHTS_NAME):
        if required not in members:
            raise NemoCheckpointError(f"{path}: archive has no {required} (members: {sorted(members)})")
    return members


def _vocabulary(cfg: Dict[str, Any], members: Dict[str, bytes]):
    tokenizer = cfg.get("tokenizer")
    if tokenizer:
        require(tokenizer.get("type") == "bpe", "tokenizer.type", tokenizer.get("type"), "bpe (SentencePiece)")
        model_path = str(tokenizer.get("model_path", ""))
        base = posixpath.basename(model_path.split("nemo:", 1)[-1])
        matches = [name for name in members if posixpath.basename(name) == base]
        if not matches:
            raise NemoCheckpointError(f"tokenizer.model_path {model_path!r} is not in the archive")
        try:
            return SentencePieceVocabulary(members[matches[0]])
        except (RuntimeError, OSError, ValueError, TypeError) as error:
            raise NemoCheckpointError(f"tokenizer {matches[0]!r} is not a SentencePiece model ({error})") from error
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
    if not isinstance(loaded, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise NemoCheckpointError(f"{WEIGHTS_NAME} is not a state dict of named tensors")
    return {key: value for key, value in loaded.items() if not key.startswith("preprocessor.")}


def load_nemo(path: str, att_context: Optional[Sequence[int]] = None, decoder: Optional[str] = None,
              member_bytes: int = DEFAULT_BUDGETS.member_bytes) -> StreamingASR:
    """Loads a ``.nemo`` archive into a :class:`StreamingASR` operator (float32, eval mode).

    Cheap enough to validate a model before a pipeline starts: a bad archive fails after reading
    it, before any model-sized allocation.

    Args:
        path: The ``.nemo`` file.
        att_context: Attention context ``[left, right]`` (default: the model's first).
        decoder: ``"ctc"`` or ``"rnnt"`` (default: the model's own).
        member_bytes: Budget: most bytes read from the archive.

    Raises:
        NemoCheckpointError: For every failure: unreadable or unsafe archive, YAML that is not
            safe, unsupported or malformed configuration (the message names the field), weights
            that are not a plain state dict or do not match the configuration. The message
            starts with ``path``.
    """
    members = read_nemo_archive(path, member_bytes)
    try:
        return _load(members, att_context, decoder)
    except NemoCheckpointError as error:
        raise NemoCheckpointError(f"{path}: {error}") from error
    except KeyError as error:
        raise NemoCheckpointError(f"{path}: {CONFIG_NAME} lacks the required field {error}") from error
    except Exception as error:  # a hostile archive can fail anywhere; callers get one error type
        raise NemoCheckpointError(f"{path}: malformed checkpoint ({type(error).__name__}: {error})") from error


def _load(members: Dict[str, bytes], att_context: Optional[Sequence[int]], decoder: Optional[str]) -> StreamingASR:
    try:
        cfg = yaml.safe_load(members[CONFIG_NAME].decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        raise NemoCheckpointError(
            f"{CONFIG_NAME} is not plain UTF-8 YAML (Python tags are refused): {error}"
        ) from error
    if not isinstance(cfg, dict):
        raise NemoCheckpointError(f"{CONFIG_NAME} is not a mapping")
    vocabulary = _vocabulary(cfg, members)
    state = _state_dict(members)
    config = model_config(cfg, state, vocabulary.size)
    for field, layers in (("encoder.n_layers", config.encoder.n_layers),
                          ("decoder.prednet.pred_rnn_layers", config.rnnt.pred_rnn_layers if config.rnnt else 1)):
        require(0 < layers <= len(state), field, layers, f"1..{len(state)} (the weights hold {len(state)} tensors)")
    with torch.device("meta"):
        shapes = {key: tuple(value.shape) for key, value in FastConformerASR(config).state_dict().items()}
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise NemoCheckpointError(
            f"weights do not match the config: missing {missing[:8]}{'…' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'…' if len(unexpected) > 8 else ''}"
        )
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise NemoCheckpointError(f"weight {key} has shape {tuple(state[key].shape)}, config implies {shape}")
    model = FastConformerASR(config)
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
