"""echoboard golden model: float HRU references and the bit-exact fixed-point specification.

JAX runs with 64-bit types enabled: the integer model needs int64 (products of a 32-bit state
and an 18-bit coefficient are 50 bits wide) and the float reference is float64. Without x64,
JAX silently turns int64 into int32.
"""
import jax

jax.config.update("jax_enable_x64", True)
