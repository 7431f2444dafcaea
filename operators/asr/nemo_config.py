"""Maps a NeMo ``model_config.yaml`` to this package's model configuration, refusing what is unsupported.

Configs come from untrusted checkpoints: every setting is checked against what the streaming
FastConformer implements, and sizes that drive allocations or loops are range-checked, so a
bad config fails with a :class:`NemoCheckpointError` naming the field.
"""

from typing import Any, Dict, Tuple

import torch

from operators.asr.config import EncoderConfig, ModelConfig, RNNTConfig
from operators.asr.frontend import MelConfig

MAX_FFT = 1 << 16


class NemoCheckpointError(ValueError):
    """A ``.nemo`` archive that is unsafe, malformed or uses an unsupported configuration."""


def require(condition: bool, field: str, value: Any, supported: str) -> None:
    """Raises ``NemoCheckpointError`` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise NemoCheckpointError(f"unsupported configuration: {field} = {value!r} (supported: {supported})")


def _context_sizes(value: Any) -> Tuple[Tuple[int, int], ...]:
    if not value:
        return ((-1, -1),)
    if isinstance(value[0], int):
        value = [value]
    return tuple((int(pair[0]), int(pair[1])) for pair in value)


def encoder_config(cfg: Dict[str, Any]) -> EncoderConfig:
    """The supported FastConformer encoder settings of a NeMo config."""
    enc = cfg.get("encoder") or {}
    require(str(enc.get("_target_", "ConformerEncoder")).endswith("ConformerEncoder"), "encoder._target_",
            enc.get("_target_"), "ConformerEncoder")
    require(enc.get("subsampling", "striding") == "dw_striding", "encoder.subsampling", enc.get("subsampling"),
            "dw_striding")
    require(int(enc.get("subsampling_factor", 4)) == 8, "encoder.subsampling_factor",
            enc.get("subsampling_factor"), "8")
    require(bool(enc.get("causal_downsampling", False)), "encoder.causal_downsampling",
            enc.get("causal_downsampling"), "true")
    require(enc.get("self_attention_model", "rel_pos") == "rel_pos", "encoder.self_attention_model",
            enc.get("self_attention_model"), "rel_pos")
    require(bool(enc.get("untie_biases", True)), "encoder.untie_biases", enc.get("untie_biases"), "true")
    require(int(enc.get("feat_out", -1)) in (-1, int(enc["d_model"])), "encoder.feat_out", enc.get("feat_out"),
            "-1")
    require(not enc.get("reduction"), "encoder.reduction", enc.get("reduction"), "null")
    require(int(enc.get("global_tokens", 0)) == 0, "encoder.global_tokens", enc.get("global_tokens"), "0")
    require(bool(enc.get("use_bias", True)), "encoder.use_bias", enc.get("use_bias"), "true")
    kernel = int(enc.get("conv_kernel_size", 31))
    conv_context = enc.get("conv_context_size")
    require(conv_context == "causal" or (isinstance(conv_context, (list, tuple)) and list(conv_context) ==
            [kernel - 1, 0]), "encoder.conv_context_size", conv_context, "causal")
    norm = enc.get("conv_norm_type", "batch_norm")
    require(norm in ("layer_norm", "batch_norm"), "encoder.conv_norm_type", norm, "layer_norm, batch_norm")
    style = enc.get("att_context_style", "regular")
    require(style in ("chunked_limited", "regular"), "encoder.att_context_style", style,
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


def mel_config(cfg: Dict[str, Any]) -> MelConfig:
    """The supported preprocessor settings of a NeMo config, range-checked."""
    pre = cfg.get("preprocessor") or {}
    rate = int(pre.get("sample_rate", cfg.get("sample_rate", 16000)))
    require(pre.get("normalize", "per_feature") in ("NA", None, "none", False), "preprocessor.normalize",
            pre.get("normalize"), "NA (streaming models use no per-utterance normalisation)")
    require(pre.get("window", "hann") == "hann", "preprocessor.window", pre.get("window"), "hann")
    require(int(pre.get("frame_splicing", 1)) == 1, "preprocessor.frame_splicing", pre.get("frame_splicing"), "1")
    require(bool(pre.get("log", True)), "preprocessor.log", pre.get("log"), "true")
    require(pre.get("log_zero_guard_type", "add") == "add", "preprocessor.log_zero_guard_type",
            pre.get("log_zero_guard_type"), "add")
    require(float(pre.get("mag_power", 2.0)) == 2.0, "preprocessor.mag_power", pre.get("mag_power"), "2.0")
    require(pre.get("mel_norm", "slaney") == "slaney", "preprocessor.mel_norm", pre.get("mel_norm"), "slaney")
    require(not pre.get("exact_pad", False), "preprocessor.exact_pad", pre.get("exact_pad"), "false")
    guard = pre.get("log_zero_guard_value", 2.0**-24)
    require(isinstance(guard, (int, float)), "preprocessor.log_zero_guard_value", guard, "a number")
    require(8000 <= rate <= 192000, "preprocessor.sample_rate", rate, "8000..192000")
    win = int(round(float(pre.get("window_size", 0.02)) * rate))
    require(0 < win <= MAX_FFT, "preprocessor.window_size", pre.get("window_size"), f"a window of 1..{MAX_FFT} samples")
    hop = int(round(float(pre.get("window_stride", 0.01)) * rate))
    require(0 < hop <= win, "preprocessor.window_stride", pre.get("window_stride"), "1 sample..the window")
    n_fft = int(pre.get("n_fft") or 2 ** (win - 1).bit_length())
    require(win <= n_fft <= MAX_FFT, "preprocessor.n_fft", n_fft, f"window length..{MAX_FFT}")
    n_mels = int(pre.get("features", 64))
    require(0 < n_mels <= n_fft // 2 + 1, "preprocessor.features", n_mels, f"1..{n_fft // 2 + 1}")
    return MelConfig(
        sample_rate=rate,
        n_mels=n_mels,
        win_length=win,
        hop_length=hop,
        n_fft=n_fft,
        preemph=float(pre.get("preemph", 0.97) or 0.0),
        log_zero_guard=float(guard),
        lowfreq=float(pre.get("lowfreq", 0.0) or 0.0),
        highfreq=float(pre.get("highfreq", 0.0) or 0.0),
    )


def model_config(cfg: Dict[str, Any], state: Dict[str, torch.Tensor], vocab_size: int) -> ModelConfig:
    """Maps a NeMo ``model_config.yaml`` (parsed) to a :class:`ModelConfig`.

    Args:
        cfg: The parsed config.
        state: The checkpoint's state dict (its keys tell whether the joint has dropout).
        vocab_size: Size of the tokenizer's vocabulary.

    Raises:
        NemoCheckpointError: An unsupported or out-of-range setting, naming the field.
        KeyError, TypeError, ValueError: A missing or malformed field (``load_nemo`` wraps them).
    """
    encoder = encoder_config(cfg)
    mel = mel_config(cfg)
    require(mel.n_mels == encoder.feat_in, "preprocessor.features", mel.n_mels, f"encoder.feat_in = {encoder.feat_in}")
    rnnt = None
    decoder_cfg = cfg.get("decoder") or {}
    if "RNNTDecoder" in str(decoder_cfg.get("_target_", "")):
        prednet = decoder_cfg.get("prednet") or {}
        joint = (cfg.get("joint") or {}).get("jointnet") or {}
        require(decoder_cfg.get("blank_as_pad", True), "decoder.blank_as_pad", decoder_cfg.get("blank_as_pad"),
                 "true")
        require(not decoder_cfg.get("normalization_mode"), "decoder.normalization_mode",
                 decoder_cfg.get("normalization_mode"), "null")
        require(int(prednet.get("proj_size", 0) or 0) == 0, "decoder.prednet.proj_size", prednet.get("proj_size"),
                 "0")
        require("aux_ctc" in cfg, "aux_ctc", None, "hybrid RNNT/CTC models (pure RNNT models are not supported)")
        greedy = ((cfg.get("decoding") or {}).get("greedy") or {})
        rnnt = RNNTConfig(
            pred_hidden=int(prednet["pred_hidden"]),
            pred_rnn_layers=int(prednet.get("pred_rnn_layers", 1)),
            joint_hidden=int(joint["joint_hidden"]),
            joint_activation=str(joint.get("activation", "relu")).lower(),
            joint_dropout="joint.joint_net.2.weight" in state,
            max_symbols=int(greedy.get("max_symbols", 10) or 10),
        )
        require(rnnt.joint_activation in ("relu", "tanh", "sigmoid"), "joint.jointnet.activation",
                 rnnt.joint_activation, "relu, tanh, sigmoid")
    else:
        require("ConvASRDecoder" in str(decoder_cfg.get("_target_", "ConvASRDecoder")), "decoder._target_",
                 decoder_cfg.get("_target_"), "ConvASRDecoder, RNNTDecoder")
    return ModelConfig(encoder=encoder, vocab_size=vocab_size, rnnt=rnnt, mel=mel)
