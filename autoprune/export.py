"""Discovered metrics out to other tools: a JSON tree, a standalone PyTorch function, LaTeX.

A metric file is data: ``load_metric`` reads JSON (an ``expression`` string, a ``tree``, or a
policy's ``metric``) or a bare expression, and parses it against the whitelist; nothing is
ever evaluated as code.
"""

from __future__ import annotations

import json
from pathlib import Path

from autoprune.errors import UserError
from autoprune.pruning.expression import ARITY, NAMED_FORMS, TERMINALS, Expr, const, parse
from autoprune.pruning.simplify import rank_form

FORMATS = ("json", "python", "latex")
FILE_FORMAT = "autoprune-metric"


def to_tree(e: Expr) -> dict:
    if e.op == "const":
        return {"const": e.value}
    if e.op in TERMINALS:
        return {"terminal": e.op}
    return {"op": e.op, "args": [to_tree(a) for a in e.args]}


def from_tree(d, depth: int = 0) -> Expr:
    """The expression of a JSON tree, checked node by node against the whitelist."""
    if depth > 32 or not isinstance(d, dict):
        raise UserError("metric tree: each node is an object {op, args}, {terminal} or {const}")
    if set(d) == {"const"} and isinstance(d["const"], (int, float)) and not isinstance(d["const"], bool):
        return const(d["const"])
    if set(d) == {"terminal"} and d["terminal"] in TERMINALS:
        return Expr(d["terminal"])
    if set(d) == {"op", "args"} and d["op"] in ARITY and isinstance(d["args"], list):
        if len(d["args"]) != ARITY[d["op"]]:
            raise UserError(f"metric tree: {d['op']} takes {ARITY[d['op']]} arguments, got {len(d['args'])}")
        return Expr(d["op"], tuple(from_tree(a, depth + 1) for a in d["args"]))
    raise UserError(f"metric tree: unknown or malformed node {json.dumps(d)[:80]}")


def to_json(e: Expr, meta: dict | None = None) -> str:
    return json.dumps({"format": FILE_FORMAT, "version": 1, "expression": str(e), "rank_form": str(rank_form(e)),
                       "uses_gradients": "G" in e.terminals, "tree": to_tree(e), "meta": meta or {}},
                      indent=2) + "\n"


def load_metric(spec: str) -> Expr:
    """A metric from a file (JSON from ``to_json``, a policy JSON, or a bare expression), a named
    metric, or an expression string."""
    path = Path(spec)
    if spec in NAMED_FORMS:
        return parse(NAMED_FORMS[spec])
    if not path.is_file():
        if spec.endswith(".json"):
            raise UserError(f"{spec}: metric file not found")
        return parse(spec)
    text = path.read_text(errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            return parse(text)
        except UserError as e:
            raise UserError(f"{spec}: not a metric file ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{spec}: a metric file is a JSON object")
    try:
        if "tree" in data:
            return from_tree(data["tree"])
        text = data.get("expression", data.get("metric"))
        if not isinstance(text, str):
            raise UserError("no 'expression', 'tree' or 'metric' field")
        return parse(NAMED_FORMS.get(text, text))
    except UserError as e:
        raise UserError(f"{spec}: {e}") from None


def metric_spec(spec: str) -> str:
    """What ``Policy.metric`` holds for a metric file or string: a named metric, else the canonical form."""
    from autoprune.pruning.metrics import NAMED, NAMED_EXPRESSIONS

    if spec in NAMED or spec in NAMED_EXPRESSIONS or spec == "sparsegpt":
        return spec
    return str(load_metric(spec))


_PY_PRELUDE = '''import torch

EPS, BIG = 1e-8, 1e30


def _safe(t):
    return torch.nan_to_num(t, nan=0.0, posinf=BIG, neginf=-BIG)


def _div(a, b):
    return _safe(a / torch.where(b >= 0, b.clamp_min(EPS), b.clamp_max(-EPS)))


def _mms(a):
    return _safe((a - a.min()) / (a.max() - a.min() + EPS))


def _zscore(a):
    return _safe((a - a.mean()) / (a.std(correction=0) + EPS))
'''

_PY_OPS = {
    "abs": "_safe({0}.abs())", "neg": "_safe(-{0})", "sqr": "_safe({0} * {0})", "sqrt": "_safe({0}.abs().sqrt())",
    "log": "_safe(({0}.abs() + EPS).log())", "exp": "_safe({0}.clamp(max=80.0).exp())",
    "tanh": "_safe({0}.tanh())", "sigmoid": "_safe({0}.sigmoid())", "mms": "_mms({0})", "zscore": "_zscore({0})",
    "rowsum": "_safe({0}.sum(dim=-1, keepdim=True) * (W.shape[1] / {0}.shape[-1]))",
    "colsum": "_safe({0}.sum(dim=0, keepdim=True) * (W.shape[0] / {0}.shape[0]))",
    "add": "_safe({0} + {1})", "sub": "_safe({0} - {1})", "mul": "_safe({0} * {1})", "div": "_div({0}, {1})",
}


def to_python(e: Expr, name: str = "metric") -> str:
    """Source of a standalone module: ``metric(W, X, G=None)`` with torch only, same protected ops."""
    lines: list[str] = []

    def emit(x: Expr) -> str:
        if x.op == "const":
            return f"torch.full((1, 1), {x.value!r}, device=W.device)"
        if x.op in TERMINALS:
            return x.op
        args = [emit(a) for a in x.args]
        var = f"t{len(lines)}"
        lines.append(f"    {var} = {_PY_OPS[x.op].format(*args)}")
        return var

    out = emit(e)
    uses_g = "G" in e.terminals
    uses_h = bool(e.terminals & {"Hd", "Hi"})
    guard = '    if G is None:\n        raise ValueError("this metric needs the gradient statistic G")\n' if uses_g else ""
    guard += ('    if Hd is None or Hi is None:\n        raise ValueError("this metric needs diag(H) and diag(chol(H^-1))")\n'
              if uses_h else "")
    g_line = "    G = G.float().to(W.device)\n" if uses_g else ""
    g_line += ("    Hd = Hd.float().to(W.device).view(1, -1)\n    Hi = Hi.float().to(W.device).view(1, -1)\n"
               if uses_h else "")
    return (f'"""Pruning metric exported by autoprune: {e}\n\nscore = f(W, X, G); compare scores within each '
            f'output row (or N:M group) and keep the highest.\n"""\n\n{_PY_PRELUDE}\n\n'
            f'def {name}(W, X, G=None, Hd=None, Hi=None):\n'
            f'    """W (out, in) weight, X (in,) activation norm per input channel, G (out, in) RMS gradient,\n'
            f'    Hd (in,) diagonal of the Hessian 2/n XX^T, Hi (in,) diagonal of the upper Cholesky factor of its inverse."""\n'
            f'{guard}    W = W.float()\n    X = X.float().to(W.device).view(1, -1)\n{g_line}'
            + "\n".join(lines) + ("\n" if lines else "") + f"    return {out}.expand(W.shape)\n")


_LATEX_UNARY = {"abs": r"\left|{0}\right|", "sqr": r"\left({0}\right)^{{2}}", "sqrt": r"\sqrt{{{0}}}",
                "log": r"\log\left({0}\right)", "exp": r"\exp\left({0}\right)", "tanh": r"\tanh\left({0}\right)",
                "sigmoid": r"\sigma\left({0}\right)", "mms": r"\operatorname{{mms}}\left({0}\right)",
                "zscore": r"\operatorname{{zscore}}\left({0}\right)", "rowsum": r"\textstyle\sum_{{\mathrm{{row}}}}\left({0}\right)",
                "colsum": r"\textstyle\sum_{{\mathrm{{col}}}}\left({0}\right)"}


def to_latex(e: Expr) -> str:
    def tex(x: Expr, parent: str = "") -> str:
        if x.op == "const":
            return "%.6g" % x.value
        if x.op in TERMINALS:
            return x.op
        if x.op == "neg":
            body = "-" + tex(x.args[0], "neg")
            return rf"\left({body}\right)" if parent in ("mul", "mulr", "addr", "subr", "neg") else body
        if x.op in _LATEX_UNARY:
            return _LATEX_UNARY[x.op].format(tex(x.args[0], x.op))
        a, b = tex(x.args[0], x.op), tex(x.args[1], x.op + "r")
        if x.op == "div":
            return rf"\frac{{{a}}}{{{b}}}"
        body = {"add": f"{a} + {b}", "sub": f"{a} - {b}", "mul": rf"{a} \cdot {b}"}[x.op]
        needs = x.op in ("add", "sub") and parent in ("mul", "mulr", "neg", "subr")
        return rf"\left({body}\right)" if needs else body

    return tex(e)


def export_metric(e: Expr, fmt: str, meta: dict | None = None) -> str:
    if fmt == "json":
        return to_json(e, meta)
    if fmt == "python":
        return to_python(e)
    if fmt == "latex":
        return to_latex(e) + "\n"
    raise UserError(f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")
