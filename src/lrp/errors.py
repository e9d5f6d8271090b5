"""Exceptions raised by pytorch-lrp. Every message names the layer, op, shape or file at fault."""

__all__ = ["DataError", "LRPError", "NonFiniteError", "TargetError", "UnsupportedOperationError"]


class LRPError(Exception):
    """Base class of all errors raised by pytorch-lrp."""


class UnsupportedOperationError(LRPError):
    """An operation on the path from input to output has no LRP rule (or the rule does not fit it).

    Not a TypeError: torch turns a TypeError raised inside ``x * y`` into ``NotImplemented``, which
    would hide this message behind "unsupported operand type(s)"."""


class NonFiniteError(LRPError, ValueError):
    """An input, output or relevance tensor holds NaN or infinite values."""


class TargetError(LRPError, ValueError):
    """The requested target does not fit the model output."""


class DataError(LRPError, ValueError):
    """An input file, label table, volume or array is malformed or does not fit the others (the
    message names the file or argument and the mismatch)."""
