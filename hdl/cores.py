"""The HRU cores a design can hold: same ports, commands, address map and golden contract.

``pipelined`` (hdl.hru_core.HRUCore): one oscillator update per clock per lane, 36 wide
multipliers at P16/N8/K1 — the ECP5 image. ``serial`` (hdl.hru_serial.SerialHRUCore): one 16×16
multiplier walking the integer model's operations — the iCE40UP5K image (linear HRU, one lane).
"""
from echoboard.hdl.hru_core import HRUCore, check_config
from echoboard.hdl.hru_serial import SerialHRUCore, check_serial_config

__all__ = ["CORES", "check_core", "make_core"]

CORES = {"pipelined": HRUCore, "serial": SerialHRUCore}
_CHECKS = {"pipelined": check_config, "serial": check_serial_config}


def _known(kind: str) -> str:
    if kind not in CORES:
        raise ValueError(f"unknown core {kind!r}; known cores: {', '.join(CORES)}")
    return kind


def check_core(kind: str, fmt, size, lanes: int = 1) -> None:
    """Clear errors for an unknown core or a configuration it cannot implement (builds nothing)."""
    _CHECKS[_known(kind)](fmt, size, lanes)


def make_core(kind: str, fmt, size, lanes: int = 1):
    """The ``kind`` core; its constructor checks the configuration (check_core's errors)."""
    return CORES[_known(kind)](fmt, size, lanes)
