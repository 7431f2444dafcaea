"""``FastConformerASR``: encoder plus heads, and small random models for tests and benchmarks."""

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from operators.asr.config import EncoderConfig, ModelConfig
from operators.asr.decoders import ConvASRDecoder, RNNTDecoder, RNNTJoint
from operators.asr.encoder import FastConformerEncoder


class FastConformerASR(nn.Module):
    """A NeMo FastConformer CTC model, or a hybrid RNNT/CTC model, with NeMo's state-dict keys.

    CTC model: ``encoder.*`` and ``decoder.decoder_layers.0.*``. Hybrid model: ``encoder.*``,
    ``decoder.prediction.*``, ``joint.*`` and ``ctc_decoder.decoder_layers.0.*``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = FastConformerEncoder(config.encoder)
        if config.rnnt is None:
            self.decoder = ConvASRDecoder(config.encoder.d_model, config.vocab_size)
        else:
            self.decoder = RNNTDecoder(config.vocab_size, config.rnnt)
            self.joint = RNNTJoint(config.encoder.d_model, config.vocab_size, config.rnnt)
            self.ctc_decoder = ConvASRDecoder(config.encoder.d_model, config.vocab_size)

    @property
    def ctc_head(self) -> ConvASRDecoder:
        """The CTC head (``decoder`` of a CTC model, ``ctc_decoder`` of a hybrid one)."""
        return self.decoder if self.config.rnnt is None else self.ctc_decoder


def random_model(config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> FastConformerASR:
    """A model with random weights, including non-trivial biases and norms (tests, benchmarks)."""
    generator = torch.Generator().manual_seed(seed)
    model = FastConformerASR(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            fan_in = parameter.shape[-1] if parameter.dim() > 1 else parameter.shape[0]
            if parameter.dim() > 2:
                fan_in = int(np.prod(parameter.shape[1:]))
            scale = 1.0 / math.sqrt(max(1, fan_in))
            values = torch.randn(parameter.shape, generator=generator) * scale
            if name.endswith("weight") and parameter.dim() == 1:
                values = 1.0 + 0.1 * torch.randn(parameter.shape, generator=generator)
            parameter.copy_(values)
        if config.rnnt is not None:
            model.decoder.prediction["embed"].weight[config.vocab_size].zero_()
    return model.to(dtype).eval()


def small_config(**encoder_overrides) -> ModelConfig:
    """A tiny model config (tests): 2 layers, d 64, 4 heads, kernel 9, 16 subsampling channels."""
    encoder = replace(
        EncoderConfig(n_layers=2, d_model=64, n_heads=4, subsampling_conv_channels=16), **encoder_overrides
    )
    return ModelConfig(encoder=encoder, vocab_size=12)
