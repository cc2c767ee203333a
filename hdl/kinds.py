"""Which HRU a format builds: the format's type is the build-time choice of the HRU."""
from __future__ import annotations

from echoboard.golden_model.formats import FixedFormat

__all__ = ["base_format", "hru_kind"]


def hru_kind(fmt) -> str:
    """"linear" for a golden_model FixedFormat, "nonlinear" for a NonlinearFormat (its ``base`` is one)."""
    if isinstance(fmt, FixedFormat):
        return "linear"
    if isinstance(getattr(fmt, "base", None), FixedFormat):
        return "nonlinear"
    raise TypeError(f"the HRU core needs a FixedFormat or a NonlinearFormat, got {type(fmt).__name__}")


def base_format(fmt) -> FixedFormat:
    """The FixedFormat that fixes the shared widths (state, input, coefficients, accumulators)."""
    return fmt if hru_kind(fmt) == "linear" else fmt.base

