"""Silero VAD (16 kHz) as a plain PyTorch module with explicit streaming state (no Beam import).

Silero's TorchScript model keeps its LSTM state and the last 64 input samples inside the module,
so one instance serves one stream. Here the same network takes that state as an input and
returns it (NeMo / continual-inference style): any number of streams are batched along axis 0,
each row with its own state, and a state can be stored between steps or moved between workers.

One step reads a window of 512 new samples (32 ms) preceded by the stream's previous 64 samples
(zeros at the start), reflect-pads 64 samples on the right, takes a 256-point STFT magnitude with
hop 128 (a fixed Conv1d basis), runs four Conv1d+ReLU layers down to one frame, one LSTMCell
step, and a 1x1 conv + sigmoid: the speech probability of the window.

Weights: by default those of ``silero_vad.jit`` in the ``silero-vad`` package (the released
v6.2 model; its float32 ONNX files hold the same numbers). The package's ``silero_vad_16k.safetensors``
(for its tinygrad port) has the same layout but other values in 6.2.3 (snakers4/silero-vad#768);
pass its path to use it.
"""

import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["SileroVAD", "VADState", "concat_states", "select_streams", "package_file", "load_silero_vad"]

SAMPLE_RATE = 16000
WINDOW = 512
CONTEXT = 64
HIDDEN = 128
HOW_TO_INSTALL = ("the silero-vad package is not installed: `pip install --no-deps silero-vad==6.2.3` "
                  "(only its model files are used), or pass the path to silero_vad.jit or "
                  "silero_vad_16k.safetensors")
# TorchScript names (prefix under ``_model.``, the 16 kHz network) → ours (the safetensors names).
_JIT_NAMES = {
    "stft.forward_basis_buffer": "stft_conv.weight",
    "encoder.0.reparam_conv.": "conv1.",
    "encoder.1.reparam_conv.": "conv2.",
    "encoder.2.reparam_conv.": "conv3.",
    "encoder.3.reparam_conv.": "conv4.",
    "decoder.rnn.": "lstm_cell.",
    "decoder.decoder.2.": "final_conv.",
}


class VADState(NamedTuple):
    """What streams carry between windows (zeros at the start); every field is batched on axis 0.

    Attributes:
        h: ``[B, 128]`` LSTM hidden state.
        c: ``[B, 128]`` LSTM cell state.
        context: ``[B, 64]`` the stream's last 64 samples.
    """

    h: torch.Tensor
    c: torch.Tensor
    context: torch.Tensor


def concat_states(states: Sequence[VADState]) -> VADState:
    """Joins the streams of several states into one batch (in order)."""
    return VADState(*(torch.cat(fields) for fields in zip(*states)))


def select_streams(state: VADState, indices: Sequence[int]) -> VADState:
    """Keeps the streams at ``indices`` (in that order): ``[i]`` splits one stream out."""
    index = torch.as_tensor(list(indices), dtype=torch.long, device=state.h.device)
    return VADState(*(field.index_select(0, index) for field in state))


class SileroVAD(nn.Module):
    """The Silero VAD network for 16 kHz audio; parameter names are those of its safetensors file."""

    SAMPLE_RATE = SAMPLE_RATE
    WINDOW = WINDOW
    CONTEXT = CONTEXT

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)  # real, imag bases
        self.conv1 = nn.Conv1d(129, 128, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, HIDDEN, kernel_size=3, stride=1, padding=1)
        self.lstm_cell = nn.LSTMCell(HIDDEN, HIDDEN)
        self.final_conv = nn.Conv1d(HIDDEN, 1, kernel_size=1)

    def init_state(self, batch: int) -> VADState:
        """The state of ``batch`` new streams (zeros, on the model's device)."""
        device = self.final_conv.weight.device
        zeros = torch.zeros(batch, HIDDEN, device=device)
        return VADState(zeros, zeros.clone(), torch.zeros(batch, CONTEXT, device=device))

    @torch.no_grad()
    def step(self, windows: torch.Tensor, state: VADState) -> Tuple[torch.Tensor, VADState]:
        """Speech probability of the next window of each stream.

        Args:
            windows: ``[B, 512]`` float32 audio in [-1, 1], row ``b`` the next window of stream ``b``.
            state: The streams' state (``init_state(B)`` at the start).

        Returns:
            ``[B]`` probabilities and the streams' new state.
        """
        if windows.dim() != 2 or windows.shape[1] != WINDOW or windows.shape[0] != state.h.shape[0]:
            raise ValueError(f"expected windows [{state.h.shape[0]}, {WINDOW}], got {list(windows.shape)}")
        x = torch.cat([state.context, windows], dim=1)
        spec = self.stft_conv(nn.functional.pad(x.unsqueeze(1), (0, CONTEXT), mode="reflect"))
        y = torch.sqrt(spec[:, :129] ** 2 + spec[:, 129:] ** 2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            y = torch.relu(conv(y))
        h, c = self.lstm_cell(y.squeeze(-1), (state.h, state.c))
        prob = torch.sigmoid(self.final_conv(torch.relu(h).unsqueeze(-1))).mean(dim=(1, 2))
        return prob, VADState(h, c, x[:, -CONTEXT:])

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Offline: ``[B, n]`` audio from the start of the streams → ``[B, n // 512]`` probabilities
        (whole windows only), the reference that stepping must equal."""
        state = self.init_state(audio.shape[0])
        probs = []
        for start in range(0, audio.shape[1] - WINDOW + 1, WINDOW):
            prob, state = self.step(audio[:, start : start + WINDOW], state)
            probs.append(prob)
        return torch.stack(probs, dim=1) if probs else audio.new_zeros(audio.shape[0], 0)


def package_file(name: str) -> Path:
    """``name`` in the installed silero-vad package's data directory (the package is not imported).

    Raises:
        FileNotFoundError: If silero-vad is not installed, saying how to install it.
    """
    spec = find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Silero VAD weights not found: {HOW_TO_INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "data" / name


def _jit_weights(path: Path) -> Dict[str, torch.Tensor]:
    """The 16 kHz network's tensors from the TorchScript archive (read, never run), renamed."""
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; only its tensors are read
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)
        archive = torch.jit.load(str(path), map_location="cpu").state_dict()
    weights = {}
    for key, value in archive.items():
        for old, new in _JIT_NAMES.items():
            if key.startswith("_model." + old):
                weights[new + key[len("_model." + old):]] = value
    return weights


def load_silero_vad(path: Optional[str] = None) -> SileroVAD:
    """Builds the network with Silero's weights, in eval mode, float32, on the CPU.

    Args:
        path: ``silero_vad.jit`` or ``silero_vad_16k.safetensors``; default: the installed
            package's ``silero_vad.jit``.

    Raises:
        FileNotFoundError: If no path is given and silero-vad is not installed.
        ValueError: If the file is not Silero VAD's model.
    """
    path = Path(path) if path is not None else package_file("silero_vad.jit")
    model = SileroVAD()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights = load_file(str(path))
        else:
            weights = _jit_weights(path)
        model.load_state_dict(weights)
    except (RuntimeError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not Silero VAD's 16 kHz model (silero_vad.jit or "
                         f"silero_vad_16k.safetensors of silero-vad 6.x): {str(err)[:200]}") from None
    return model.eval()
