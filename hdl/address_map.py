"""The HRU core's host address map: ``{region, lane, index}`` addresses of hdl.regions' stores.

Shared by the pipelined core (hdl.hru_core), the serial core (hdl.hru_serial) and the board's
sequencer; the protocol (firmware/protocol.py) takes the same region enums.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.utils import ceil_log2

from echoboard.hdl.memories import addr_width
from echoboard.hdl.regions import Region

__all__ = ["PHASES", "Region", "AddressMap", "region_width"]

PHASES = ("forward", "echo_plus", "echo_minus", "gradient")  # order of golden_model.hru_fixed.PHASES


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

