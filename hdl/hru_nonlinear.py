"""The nonlinear HRU's lane: golden_model.hru_fixed_nonlinear in the core's shared structure.

``HRUCore(NonlinearFormat(), size, lanes)`` builds the nonlinear core: the sequencer, commands,
streams, MAC engine (b = W(R(B·u)); the matrix accumulator ACC_TU += R(Δt·u)), drifts, kick,
nudges, overflow counters and host port are hdl.hru_core's and hdl.hru_lane's; ``NonlinearLane`` replaces only
the force and the echo-pair read-out (``HRULane``'s hooks).

Oscillator pipeline (stage = cycles after issue; 0-7 and 18-24 are the linear lane's):

     7  yh (drift 1); b arrives
  8, 9  W·yh and α·yh (DSP partial products, their sums); b + bias·2^(Fs−Fc)
    10  a = W(R(W·yh, Fw) + b + bias·2^(Fs−Fc)) and R(α·yh, Fa)
 11-15  t = tanhQ(a, Fs)                         hdl.tanh (ROM read at 11, result at 15)
 16,17  σc·t, and t·yh for the read-out
    18  f = W(R(α·yh, Fa) + R(σc·t, Fσ + T − Fs))
 19-24  kick, drift 2, write-back (24)

So a step costs max(E·R, 24) cycles instead of max(E·R, 16): one oscillator (echo) update per
lane per clock once E·R >= 24. The read-out taps the back-to-back ±ε items at stage 15 (−ε at
15, +ε at 16), like the linear lane at stage 7: d, S, Δa = W(a⁺ − a⁻), a⁺ + a⁻ and Δt = t⁺ − t⁻;
Δt goes to the diff store for the MAC engine (written at 15, hence an echo slot of at least
R + 16 cycles, ``SlotLengths``), acc_t += Δt at once, tanh(ā) = tanhQ(a⁺ + a⁻, Fs + 1) through
a second tanh pipeline on the same ROM (its second read ports), then d·S and tanh(ā)·Δa feed
acc_yy and acc_lc at stage 23; t·yh of both items meet at stages 17/18 for acc_ty.

Multipliers per lane (18×18 partial products, default widths): δ·z ×2, δ·f, W·yh, α·yh: 2 each;
σc·t 2 (t has T + 2 = 19 bits); t·yh 4; the two interpolations 1 each; d·S 4; tanh(ā)·Δa 4;
B·u 1 and Δt·u 2 per MAC column: 26 + 3·M (50 with M = 8); an HSSM block adds 10 + 2·M
(hdl.hru_lane).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, signed

from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
from echoboard.hdl.fixed import add_round_shift, round_shift, wrap
from echoboard.hdl.hru_lane import HRULane
from echoboard.hdl.pipeline import Pipeline
from echoboard.hdl.regions import NonlinearBlockRegion
from echoboard.hdl.tanh import TanhRom, tanh_stages

__all__ = ["NonlinearLane"]


class NonlinearLane(HRULane):
    """R oscillators of the nonlinear core (see the module docstring for the pipeline)."""

    kind = "nonlinear"
    regions = NonlinearBlockRegion
    PARAMETERS = {"W": NonlinearBlockRegion.W, "bias": NonlinearBlockRegion.BIAS, "sigma_c": NonlinearBlockRegion.SIGMA,
                  "alpha": NonlinearBlockRegion.ALPHA, "delta": NonlinearBlockRegion.DELTA, "B": NonlinearBlockRegion.B}
    ACCUMULATORS = {"acc_yy": NonlinearBlockRegion.ACC_YY, "acc_t": NonlinearBlockRegion.ACC_T,
                    "acc_tu": NonlinearBlockRegion.ACC_TU, "acc_lc": NonlinearBlockRegion.ACC_LC,
                    "acc_ty": NonlinearBlockRegion.ACC_TY}
    COEFFICIENTS = {"alpha": NonlinearBlockRegion.ALPHA, "w": NonlinearBlockRegion.W, "bias": NonlinearBlockRegion.BIAS,
                    "sigma": NonlinearBlockRegion.SIGMA}
    BLOCK_PARAMETERS = {"gain": NonlinearBlockRegion.GAIN}
    BLOCK_ACCUMULATORS = {"kin": NonlinearBlockRegion.KIN}
    GAIN = NonlinearBlockRegion.GAIN
    STEP_WRAPS = 6  # flip/nudge, drift 1, argument, force, kick, drift 2
    READ_OUT_FLAGS = 7  # d, S, Δa, acc_yy, acc_t, acc_lc, acc_ty

    @staticmethod
    def check_format(fmt) -> None:
        if not isinstance(fmt, NonlinearFormat):
            raise TypeError(f"the nonlinear lane needs a NonlinearFormat, got {type(fmt).__name__}")
        if fmt.base.delta_frac + fmt.tanh.out_frac < fmt.base.state_frac:
            raise ValueError("the nonlinear core needs delta_frac + tanh.out_frac >= state_frac "
                             "(e = g·Δt is rounded down to the state)")

    def _gain_shift(self) -> int:
        """e = W(R(g·Δt, Fd + T − Fs)) (docs/numerics.md B4')."""
        fmt = self._fmt
        return fmt.base.delta_frac + fmt.tanh.out_frac - fmt.base.state_frac

    def _diff_shape(self):
        """Δt = t⁺ − t⁻: |Δt| <= 2^(T+1), T + 3 bits."""
        return signed(self._fmt.tanh.out_frac + 3)

    def _datapath_stores(self, m: Module):
        """The tanh ROM: one read port pair for the force, one for the read-out's tanh(ā)."""
        rom = TanhRom(m, self._fmt.tanh)
        return rom, rom.port(), rom.port()

    def _force(self, m: Module, op: Pipeline, b_data, extra) -> tuple[int, tuple]:
        fmt = self._fmt
        base = fmt.base
        fs, ws = base.state_frac, base.state_width
        rom, force_port, _ = extra
        s = op.multiply(w_prod=(op.f["w"], op.f["yh"]), alpha_prod=(op.f["alpha"], op.f["yh"]), carry={"b": b_data},
                        then=lambda st: {"b_bias": st["b"] + (st["bias"] << (fs - fmt.coef_bias_frac))})
        arg, arg_ovf = wrap(add_round_shift(s["b_bias"], s["w_prod"], fmt.coef_w_frac), ws)
        s = op.advance(drop=("w_prod", "alpha_prod", "b", "b_bias", "w", "bias", "alpha"), arg=arg,
                       alpha_term=round_shift(s["alpha_prod"], base.coef_a_frac), ev=s["ev"] + arg_ovf)
        s = tanh_stages(op, "arg", fs, rom, force_port, "t")
        tap = len(op.stages) - 1
        s = op.multiply(sigma_prod=(s["sigma"], s["t"]), ty=(s["t"], s["yh"]))
        force, ovf = wrap(add_round_shift(s["alpha_term"], s["sigma_prod"],
                                          fmt.coef_sigma_frac + fmt.tanh.out_frac - fs), ws)
        op.advance(drop=("sigma_prod", "alpha_term", "sigma", "arg", "t"), f=force, ev=s["ev"] + ovf)
        return tap, ("ty",)  # t·yh of the +ε item is read one stage later (``_read_out``)

    def _read_out(self, m: Module, op: Pipeline, tap: int, gp: Pipeline, extra):
        fmt = self._fmt
        base = fmt.base
        ws = base.state_width
        rom, _, read_out_port = extra
        minus, plus = op.stages[tap], op.stages[tap + 1]
        d, d_ovf = wrap(plus["yh"] - minus["yh"], ws)
        ssum, s_ovf = wrap(plus["yh"] + minus["yh"], ws)
        darg, darg_ovf = wrap(plus["arg"] - minus["arg"], ws)
        dt = plus["t"] - minus["t"]
        g = gp.advance(d=d, ssum=ssum, darg=darg, arg_sum=plus["arg"] + minus["arg"], dt=dt,
                       ev=d_ovf + s_ovf + darg_ovf)
        flag_events = Mux(g["valid"], g["ev"], 0)
        updates = {NonlinearBlockRegion.ACC_T: (g["valid"], g["row"], g["dt"])}
        # tanh(ā) reads the unwrapped sum a⁺ + a⁻ with one more fractional bit: no rounding
        g = tanh_stages(gp, "arg_sum", base.state_frac + 1, rom, read_out_port, "tm", drop=("dt", "ev"))
        g = gp.multiply(drop=("d", "ssum", "darg", "arg_sum", "tm"), yy=(g["d"], g["ssum"]), lc=(g["tm"], g["darg"]))
        updates[NonlinearBlockRegion.ACC_YY] = (g["valid"], g["row"], round_shift(g["yy"], base.acc_a_shift))
        updates[NonlinearBlockRegion.ACC_LC] = (g["valid"], g["row"], round_shift(g["lc"], fmt.acc_logcosh_shift))
        # t·yh of the −ε item (stage tap + 2) and of the +ε item (tap + 3): their difference, then
        # one rounding (the rounding shift sits in front of the accumulator's input register)
        ty_minus, ty_plus = op.stages[tap + 2], op.stages[tap + 3]
        tp = Pipeline(m, "grad_ty", valid=ty_minus["valid"] & ty_minus["echo"] & ty_minus["slot"],
                      row=ty_minus["row"])
        t = tp.advance(ty_diff=ty_plus["ty"] - ty_minus["ty"])
        updates[NonlinearBlockRegion.ACC_TY] = (t["valid"], t["row"], round_shift(t["ty_diff"], fmt.acc_ty_shift))
        return dt, updates, flag_events
