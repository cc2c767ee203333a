"""The HRU core's host address map: regions and ``{region, lane, index}`` addresses.

Shared by the pipelined core (hdl.hru_core), the serial core (hdl.hru_serial), the board's
sequencer and the protocol (firmware/protocol.py numbers its regions the same, checked by a test).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.utils import ceil_log2

from echoboard.hdl.memories import addr_width

__all__ = ["PHASES", "Region", "LinearRegion", "AddressMap", "region_width"]

PHASES = ("forward", "echo_plus", "echo_minus", "gradient")  # order of golden_model.hru_fixed.PHASES


class Region(enum.IntEnum):
    """Top address field of the host port. Per-oscillator regions hold P words, B/ACC_B P×N."""

    A = 0
    B = 1
    DELTA = 2
    NUDGE = 3  # the constant nudge vector n (state units), added as ±n (not the streamed ones)
    Y0 = 4  # slot 0: forward state; after ECHO the +ε echo's state
    Z0 = 5
    Y1 = 6  # slot 1: the −ε echo's state after ECHO
    Z1 = 7
    POS_SUM = 8
    ACC_A = 9
    ACC_B = 10
    COUNTERS = 11  # index = position in PHASES; read-only


#: The linear core's regions: Region plus KIN, δ's kinetic accumulator of an HSSM block
#: (docs/numerics.md B3; P words, acc_width, read-only). Region stays the numbering the board's
#: protocol uses (firmware.protocol.Region equals it) until the board reads KIN; 12 is the first
#: free 4-bit number (the nonlinear core's 12..17 were taken before, so its KIN is 18).
LinearRegion = enum.IntEnum("LinearRegion", {**{r.name: r.value for r in Region}, "KIN": 12})

_MATRIX_REGIONS = (Region.B, Region.ACC_B)  # the nonlinear core's B and ACC_TU share these numbers
_REGION_WIDTH = 4  # the linear core's; a larger region enum (the nonlinear core's) gets more bits


def region_width(regions: type[enum.IntEnum]) -> int:
    return max(_REGION_WIDTH, max(regions).bit_length())



@dataclass(frozen=True)
class AddressMap:
    """Host addresses: ``{region, lane, index}``; index = row (·N + column for B/ACC_B).

    ``regions``: the core's region enum (``Region``: 4 bits; the nonlinear core's: 5 bits).
    """

    oscillators: int
    inputs: int
    lanes: int
    regions: type[enum.IntEnum] = Region

    @property
    def rows(self) -> int:
        return self.oscillators // self.lanes

    @property
    def index_width(self) -> int:
        return max(addr_width(self.rows * self.inputs), addr_width(len(PHASES)))

    @property
    def lane_width(self) -> int:
        return ceil_log2(self.lanes)

    @property
    def addr_width(self) -> int:
        return region_width(self.regions) + self.lane_width + self.index_width

    def is_matrix(self, region) -> bool:
        """B and its gradient accumulator hold P×N words (index row·N + column), the others P."""
        return region in _MATRIX_REGIONS

    def address(self, region, osc: int = 0, col: int = 0) -> int:
        region = self.regions(region)
        if region == Region.COUNTERS:
            if not 0 <= osc < len(PHASES):
                raise ValueError(f"counter index must be in 0..{len(PHASES) - 1}, got {osc}")
            lane, index = 0, osc
        else:
            if not 0 <= osc < self.oscillators:
                raise ValueError(f"oscillator must be in 0..{self.oscillators - 1}, got {osc}")
            ncols = self.inputs if self.is_matrix(region) else 1
            if not 0 <= col < ncols:
                raise ValueError(f"column must be in 0..{ncols - 1} for {region.name}, got {col}")
            lane, row = osc % self.lanes, osc // self.lanes
            index = row * ncols + col
        return (((region << self.lane_width) | lane) << self.index_width) | index

