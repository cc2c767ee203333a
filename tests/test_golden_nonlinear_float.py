"""Float64 nonlinear HRU: RHEL approaches BPTT with an O(ε²) bias."""
from echoboard.golden_model import report


def test_nonlinear_rhel_matches_bptt_with_quadratic_bias():
    rows = report.nonlinear_float_bias([2.0**-2, 2.0**-4, 2.0**-6], length=512)
    names = ("W", "b", "c", "alpha", "B", "u")
    for name in names:
        assert 1.0 - rows[-1][name]["one_minus_cos"] >= 0.9999, name
        # quartering ε divides the norm bias by 16 (measured 15.98–16.00 here); require at least 8
        for coarse, fine in zip(rows, rows[1:]):
            assert abs(fine[name]["norm_ratio_error"]) * 8 <= abs(coarse[name]["norm_ratio_error"]), name
