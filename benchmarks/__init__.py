"""Benchmarks: each module has ``main(argv)`` that prints a table and writes JSON (see run_all.py)."""
import json
from pathlib import Path


def save_result(out: Path, result: dict) -> None:
    """Write a benchmark's result JSON (creating benchmarks/results/ on first use) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
