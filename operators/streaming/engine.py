"""The one streaming contract every live operator implements (``StreamEngine``).

A live job keeps, per stream, an engine *state*: a tree of dicts, lists and numpy arrays (so
the Beam state coder can store it without pickle and any worker can restore it). The Beam
side (``transforms.live.streams``) only moves states in and out of Beam state and calls:

* ``decode(kind, sample_rate, payload)``: checks and decodes one frame's payload into the
  engine's input; a bad payload raises a ``MediaError`` subclass naming the problem (the
  stream gets an error event and goes on).
* ``init_state()``: the state of a new stream.
* ``step(inputs, states) -> (outputs, states)``: one input per stream, many streams in one
  batched call; ``outputs[i]`` is the list of event field dicts stream ``i`` produced (often
  empty). Rows are independent: a stream's outputs do not depend on which other streams
  share the batch. The states passed in are not changed: ``step`` returns new ones (a worker
  hands the states it stored back with read-only arrays instead of decoding them again).
* ``finalize(state) -> outputs``: the end of the stream; flushes what the state still holds.
  ``finalize_many(states)`` ends several streams at once; engines that can batch the flush
  override it (by default it calls ``finalize`` per stream).

``event_name`` names the events ``step`` and ``finalize`` produce (``partial``, ``prediction``);
an output dict with an ``event`` key names its own event instead (an ASR utterance's ``final``).

Subclasses are checked when they are defined: every contract method must be overridden with
the contract's parameters, so a drifting engine fails at import, not mid-stream.
"""

import abc
import inspect
from typing import Any, Dict, List, Sequence, Tuple

State = Any  # a tree of dict / list / tuple / scalars / numpy arrays
Output = Dict[str, Any]  # JSON-able event fields

CONTRACT = {
    "decode": ("kind", "sample_rate", "payload"),
    "init_state": (),
    "step": ("inputs", "states"),
    "finalize": ("state",),
}


class StreamEngine(abc.ABC):
    """Base class of live engines; see the module docstring for the contract."""

    event_name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        if not cls.event_name:
            raise TypeError(f"{cls.__name__} must set event_name (the name of the events it produces)")
        for name, params in CONTRACT.items():
            found = tuple(inspect.signature(getattr(cls, name)).parameters)[1:]
            if found != params:
                raise TypeError(f"{cls.__name__}.{name}{found} does not match the StreamEngine contract "
                                f"{name}{params}")

    @abc.abstractmethod
    def decode(self, kind: int, sample_rate: int, payload: bytes) -> Any:
        """One payload → the engine's input; raises a ``MediaError`` subclass for a bad payload."""

    @abc.abstractmethod
    def init_state(self) -> State:
        """The state of a new stream."""

    @abc.abstractmethod
    def step(self, inputs: Sequence[Any], states: Sequence[State]) -> Tuple[List[List[Output]], List[State]]:
        """Advances each stream by its input, in one batched call."""

    @abc.abstractmethod
    def finalize(self, state: State) -> List[Output]:
        """Ends a stream: the outputs of whatever its state still holds."""

    def finalize_many(self, states: Sequence[State]) -> List[List[Output]]:
        """Ends several streams; ``outputs[i]`` is ``finalize(states[i])`` (batched where the engine can)."""
        return [self.finalize(state) for state in states]
