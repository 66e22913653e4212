"""Do two searches propose the same candidates? Compare their journals strategy by strategy.

Used to check that a rebuild of the search layer changed nothing a seed decides: run the same
search (same seed, same options) on the code before and after, then

    python benchmarks/same_candidates.py runs/before runs/after

For each strategy: candidates in each run, the longest common prefix of what it proposed (policy,
fidelity, protocol, in order), the largest relative difference of the proxy losses there, and where
the two first differ. A timed search stops at a deadline, so the runs end at different points; up to
the shorter one (and while the results that steer a strategy are the same) the lists must agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def proposals(run: Path) -> dict[str, list[tuple[str, float | None]]]:
    """Strategy -> [(candidate key, proxy loss or None)] in submission order."""
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines() if line.strip()]
    results = {e["id"]: e["result"]["loss"] for e in events if e["event"] == "result"}
    out: dict[str, list] = {}
    for e in events:
        if e["event"] == "submit":
            policy = {k: v for k, v in e["policy"].items() if k != "meta"}
            key = json.dumps([e["phase"], policy, e.get("batches"), e.get("sequential", False)], sort_keys=True)
            out.setdefault(e["strategy"], []).append((key, results.get(e["id"])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    a, b = proposals(args.before), proposals(args.after)
    print("| strategy | candidates before | after | same prefix | max rel. loss diff in prefix | first difference |")
    print("|---|---|---|---|---|---|")
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name, []), b.get(name, [])
        n = 0
        while n < min(len(x), len(y)) and x[n][0] == y[n][0]:
            n += 1
        diffs = [abs(p[1] - q[1]) / max(abs(p[1]), 1e-12) for p, q in zip(x[:n], y[:n])
                 if p[1] is not None and q[1] is not None and p[1] != float("inf") and q[1] != float("inf")]
        first = "none" if n == min(len(x), len(y)) else f"#{n + 1}"
        print(f"| {name} | {len(x)} | {len(y)} | {n} | {max(diffs, default=0.0):.2g} | {first} |")
    for run in (args.before, args.after):
        s = json.loads((run / "summary.json").read_text())
        print(f"\n{run}: winner {s.get('winner')}; policy {json.dumps(s['best_policy'])[:160]}")


if __name__ == "__main__":
    main()
