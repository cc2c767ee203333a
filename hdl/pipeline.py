"""A stall-free pipeline builder: named fields registered stage by stage.

The HRU lanes (hdl.hru_lane, hdl.hru_nonlinear) and the tanh unit (hdl.tanh) describe their
datapaths as a sequence of stages; an item issued at cycle c is in ``stages[k]`` at cycle c + k,
so the latency of anything is the index of the stage it appears in, and two items issued back to
back can meet by reading ``stages[k]`` and ``stages[k + 1]`` in the same cycle.
"""
from amaranth.hdl import Module, Signal, Value

from echoboard.hdl.fixed import partial_products

__all__ = ["Pipeline"]


class Pipeline:
    """Stall-free pipeline builder: ``advance`` registers every live field into a new stage.

    ``stages[k]`` maps field names to the values seen by the item that entered k cycles ago;
    fields may be added to the current stage (e.g. memory read data arriving there).
    """

    def __init__(self, m: Module, name: str, **fields):
        self._m, self._name = m, name
        self.stages = [dict(fields)]

    @property
    def f(self) -> dict:
        return self.stages[-1]

    @property
    def module(self) -> Module:
        """The module the registers go into (for a side effect at a stage, e.g. a memory address)."""
        return self._m

    def advance(self, drop=(), **new) -> dict:
        stage = {}
        for key, value in {**self.f, **new}.items():
            if key in drop:
                continue
            value = Value.cast(value)
            reg = Signal(value.shape(), name=f"{self._name}_{key}_{len(self.stages)}")
            self._m.d.sync += reg.eq(value)
            stage[key] = reg
        self.stages.append(stage)
        return stage

    def multiply(self, drop=(), carry=None, then=None, **products) -> dict:
        """Two stages per product ``name=(a, b)``: registered 18×18 partial products (the DSP
        output registers), then their registered shifted sum as field ``name``. ``carry``: more
        fields for the first stage; ``then(stage)``: more fields for the second, from the first."""
        parts = {name: partial_products(a, b) for name, (a, b) in products.items()}
        keys = {name: [f"{name}_p{k}" for k in range(len(p))] for name, p in parts.items()}
        stage = self.advance(drop=drop, **(carry or {}), **{key: prod for name, p in parts.items()
                                                            for key, (prod, _) in zip(keys[name], p)})
        return self.advance(drop=[k for ks in keys.values() for k in ks], **(then(stage) if then else {}),
                            **{name: sum(stage[key] << shift for key, (_, shift) in zip(keys[name], p))
                               for name, p in parts.items()})
