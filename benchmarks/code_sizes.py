"""Sizes of the package: lines per module and per class, the largest and the median, and the
test layout beside the package's.

    python benchmarks/code_sizes.py [--top 8]
"""

from __future__ import annotations

import argparse
import ast
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    modules, classes = [], []
    for path in sorted((ROOT / "autoprune").rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(ROOT))
        modules.append((len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                n_args = len(init.args.args) - 1 + len(init.args.kwonlyargs) if init else 0
                classes.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}", n_args))
    modules.sort(reverse=True)
    classes.sort(reverse=True)
    print(f"{len(modules)} modules, {sum(n for n, _ in modules)} lines; median module "
          f"{statistics.median(n for n, _ in modules):g} lines; {len(classes)} classes, median class "
          f"{statistics.median(n for n, _, _ in classes):g} lines")
    print("\n| largest modules | lines |\n|---|---|")
    for n, name in modules[:args.top]:
        print(f"| {name} | {n} |")
    print("\n| largest classes | lines | constructor arguments |\n|---|---|---|")
    for n, name, k in classes[:args.top]:
        print(f"| {name} | {n} | {k} |")
    print("\n| package folder | test folder | test files |\n|---|---|---|")
    for sub in sorted(p for p in (ROOT / "autoprune").iterdir() if p.is_dir() and not p.name.startswith("_")):
        tests = ROOT / "tests" / sub.name
        files = sorted(p.name for p in tests.glob("test_*.py")) if tests.is_dir() else []
        print(f"| autoprune/{sub.name}/ | {'tests/' + sub.name + '/' if files else '-'} | {', '.join(files) or '-'} |")
    top = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    print(f"| autoprune/*.py | tests/ | {', '.join(top)} |")


if __name__ == "__main__":
    main()
