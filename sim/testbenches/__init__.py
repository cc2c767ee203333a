"""cocotb testbenches that ship with the package, so an installed echoboard can run ``verify``
without the repository's tests/ folder (the cocotb runner loads a testbench from its file path).

``HRU_CORE``: the HRU core's testbench (hdl.verilog.run_core_case, ``echoboard verify --level core``).
"""
from pathlib import Path

__all__ = ["HRU_CORE"]

HRU_CORE = Path(__file__).with_name("cocotb_hru_core.py")
