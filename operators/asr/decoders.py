"""Output heads with NeMo's state-dict keys: CTC (``ConvASRDecoder``), RNNT prediction and joint."""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from operators.asr.config import RNNTConfig


class ConvASRDecoder(nn.Module):
    """NeMo's CTC head: ``decoder_layers.0`` = Conv1d(d, V + 1, 1); blank is the last index."""

    def __init__(self, feat_in: int, num_classes: int):
        super().__init__()
        self.decoder_layers = nn.Sequential(nn.Conv1d(feat_in, num_classes + 1, 1))

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        """``[B, T, d]`` → log-probabilities ``[B, T, V + 1]``."""
        conv = self.decoder_layers[0]
        return F.log_softmax(F.linear(encoded, conv.weight.squeeze(-1), conv.bias), dim=-1)


class _LSTMDropout(nn.Module):
    """Holds ``lstm`` so the keys read ``prediction.dec_rnn.lstm.*`` as in NeMo."""

    def __init__(self, size: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(size, size, layers)


class RNNTDecoder(nn.Module):
    """NeMo's RNNT prediction network: embedding (blank as zero padding) → LSTM."""

    def __init__(self, vocab_size: int, config: RNNTConfig):
        super().__init__()
        self.blank = vocab_size
        self.prediction = nn.ModuleDict(
            {
                "embed": nn.Embedding(vocab_size + 1, config.pred_hidden, padding_idx=vocab_size),
                "dec_rnn": _LSTMDropout(config.pred_hidden, config.pred_rnn_layers),
            }
        )

    def predict(
        self, tokens: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """One prediction step for ``tokens [B]`` (blank embeds as zeros, NeMo's start symbol)."""
        embedded = self.prediction["embed"](tokens).unsqueeze(0)
        out, (h, c) = self.prediction["dec_rnn"].lstm(embedded, state)
        return out[0], (h, c)


class RNNTJoint(nn.Module):
    """NeMo's RNNT joint: ``joint_net(act(enc(f) + pred(g)))`` with keys ``pred``, ``enc``, ``joint_net``."""

    def __init__(self, enc_hidden: int, vocab_size: int, config: RNNTConfig):
        super().__init__()
        activations = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}
        self.pred = nn.Linear(config.pred_hidden, config.joint_hidden)
        self.enc = nn.Linear(enc_hidden, config.joint_hidden)
        layers = [activations[config.joint_activation]]
        if config.joint_dropout:
            layers.append(nn.Dropout(0.0))
        layers.append(nn.Linear(config.joint_hidden, vocab_size + 1))
        self.joint_net = nn.Sequential(*layers)

    def forward(self, enc_frame: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V + 1]`` for one encoder frame ``[B, d]`` and prediction output ``[B, H]``."""
        return self.joint_net(self.enc(enc_frame) + self.pred(pred_out))
