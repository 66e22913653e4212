"""The conformance suite (tests/search/test_conformance.py) as a strategy x property table.

    python benchmarks/conformance_table.py

Runs the suite with pytest (one process, the real stories260K proxy) and prints, per strategy
(per phase for one that runs in both), each property's outcome and seconds, then the suite's
wall time.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = "tests/search/test_conformance.py"
PROPERTIES = ("target", "failed", "resume", "limit")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider",
                               f"--junitxml={xml}"], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if not xml.exists():
            print(proc.stdout + proc.stderr)
            return 1
        cells: dict[str, dict[str, str]] = {}
        notes: list[str] = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            test, _, strategy = case.get("name").partition("[")
            strategy, prop = strategy.rstrip("]"), test.removeprefix("test_")
            outcome = "FAIL" if case.find("failure") is not None or case.find("error") is not None else (
                "skip" if case.find("skipped") is not None else "pass")
            cells.setdefault(strategy, {})[prop] = f"{outcome} {float(case.get('time')):5.1f}s"
            notes += [f"{strategy} {prop}: {p.get('value')}" for p in case.iter("property") if p.get("name") == "note"]
    head = f"{'strategy':<18}" + "".join(f"{p:>14}" for p in PROPERTIES)
    print(head + "\n" + "-" * len(head))
    for strategy, row in cells.items():
        print(f"{strategy:<18}" + "".join(f"{row.get(p, '-'):>14}" for p in PROPERTIES))
    for note in notes:
        print(f"note: {note}")
    print(f"\n{proc.stdout.strip().splitlines()[-1]}; suite wall time {wall:.1f}s (model load and fixtures included)")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
