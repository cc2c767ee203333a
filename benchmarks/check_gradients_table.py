"""README's gradient-agreement table from `echoboard check-gradients --json` outputs.

Each JSON under benchmarks/results/check_gradients_*.json was written by the command this table
prints in its first column (``echoboard check-gradients ... --json > FILE``). Per report: the worst
cosine and the worst norm-ratio error over the HRU parameters and over everything else, float
RHEL and fixed-point RHEL against float64 BPTT. Run: ``python -m benchmarks.check_gradients_table``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HRU_PARAMS = {"A", "B", "delta", "W", "b", "c", "alpha"}


def command(r: dict) -> str:
    blocks = f" --blocks {r['blocks']} --hidden {r['hidden']}" if "blocks" in r else ""
    return (f"echoboard check-gradients --hru {r['hru']}{blocks} --length {r['length']} --oscillators "
            f"{r['oscillators']} --inputs {r['inputs']} --epsilon {r['epsilon']} --seed {r['seed']}")


def _worst(entries: list[dict], kind: str) -> str:
    pairs = [(e[f"rhel_{kind}_cos"], e[f"rhel_{kind}_norm_ratio"]) for e in entries if e[f"rhel_{kind}_cos"] is not None]
    if not pairs:
        return "—"
    return f"{min(c for c, _ in pairs):.6f} / {max(abs(r - 1) for _, r in pairs):.1e}"


def row(r: dict) -> str:
    hru = [e for name, e in r["params"].items() if name.rsplit(".", 1)[-1] in HRU_PARAMS and not name.startswith(
        ("encoder", "head")) and ".glu." not in name]
    rest = [e for e in r["params"].values() if not any(e is h for h in hru)]
    return (f"| `{command(r)}` | {len(r['params'])} | {_worst(hru, 'float')} | {_worst(rest, 'float')} | "
            f"{_worst(hru, 'fixed')} | {_worst(rest, 'fixed')} | {r['reversible']} | {r['overflow_events']} |")


def table(paths) -> str:
    head = ("| command | tensors | float RHEL, HRU: min cos / max \\|ratio − 1\\| | float RHEL, the rest | "
            "fixed RHEL, HRU | fixed RHEL, the rest | ε = 0 echo retraces | overflow events |\n"
            "|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(row(json.loads(Path(p).read_text())) for p in paths)])


def main(argv=None):
    paths = (argv if argv is not None else sys.argv[1:]) or sorted(RESULTS.glob("check_gradients_*.json"))
    print(table(paths))


if __name__ == "__main__":
    main()
