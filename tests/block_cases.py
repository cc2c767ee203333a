"""Random HSSM-block parameters for tests of the integer block (golden model, golden board, host)."""
import numpy as np

from echoboard.golden_model import hru_block as hb


def random_block(hru: str, P: int, N: int, rng: np.random.Generator):
    """(format, float parameters (hru_block.PARAM_NAMES), their words): stable, mildly damped ranges."""
    fmt = hb.default_format(hru)
    if hru == "linear":
        params = {"A": rng.uniform(0.1, 1, P), "B": rng.uniform(-1, 1, (P, N)) / np.sqrt(N), "delta": rng.uniform(0.5, 0.73, P)}
    else:
        params = {"W": rng.uniform(0.5, 1, P), "b": rng.uniform(-.5, .5, P), "c": rng.uniform(-1, 1, P),
                  "alpha": rng.uniform(0.1, 1, P), "B": rng.uniform(-1, 1, (P, N)) / np.sqrt(N),
                  "delta": rng.uniform(0.05, 0.2, P)}
    return fmt, params, hb.quantize_block_params(hru, params, fmt)
