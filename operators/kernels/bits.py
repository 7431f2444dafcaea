"""Bit-pattern reinterpretation between floats and integers of the same width, for jitted code.

Free register moves (LLVM ``bitcast``) that let loops use integer instructions where they are
cheaper or vectorise where the float version does not: an order-independent integer ``max`` of
``|x|`` bit patterns, or a float64 → int64 conversion without AVX-512DQ.
"""

from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

_PAIRS = {types.float32: types.int32, types.float64: types.int64, types.int32: types.float32,
          types.int64: types.float64}


@intrinsic
def reinterpret(typingctx, value):
    """The bits of a float32 / float64 as an int32 / int64, or the reverse."""
    if value not in _PAIRS:
        raise TypingError(f"reinterpret takes float32, float64, int32 or int64, not {value}")
    result = _PAIRS[value]
    sig = result(value)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(result))

    return sig, codegen
