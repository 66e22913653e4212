"""Discovered metrics and policies out to other tools: JSON, a standalone PyTorch module, LaTeX.

A metric file is data: ``load_metric`` reads JSON (an ``expression`` string, a ``tree``, or a
policy's ``metric``) or a bare expression, and parses it against the whitelist; nothing is
ever evaluated as code. Exported from a policy file, every format carries the whole policy:
the metric, the allocation with its per-block and per-linear ratios, the pattern and the update.
"""

from __future__ import annotations

import json
import pprint
from pathlib import Path

from autoprune.errors import UserError
from autoprune.pruning.expression import ARITY, NAMED_FORMS, TERMINALS, Expr, const, parse
from autoprune.pruning.policy import Policy
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


def to_json(e: Expr, meta: dict | None = None, policy: Policy | None = None) -> str:
    d = {"format": FILE_FORMAT, "version": 1, "expression": str(e), "rank_form": str(rank_form(e)),
         "uses_gradients": "G" in e.terminals, "tree": to_tree(e), "meta": meta or {}}
    if policy is not None:
        d["policy"] = policy.to_dict()
    return json.dumps(d, indent=2) + "\n"


def _is_file(spec: str) -> bool:
    """``spec`` names a file (an inline expression too long for a path is not one)."""
    try:
        return Path(spec).is_file()
    except (OSError, ValueError):
        return False


def load_policy(spec: str) -> Policy | None:
    """The policy in ``spec`` when it is a policy file (``best_policy.json``, a pruned folder's
    ``autoprune_policy.json``), else None."""
    path = Path(spec) if _is_file(spec) else None
    if path is None or path.suffix != ".json":
        return None
    try:
        data = json.loads(path.read_text(errors="replace"))
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or not {"metric", "sparsity", "allocation"} <= set(data):
        return None
    try:
        return Policy.from_dict(data)
    except (TypeError, UserError) as e:
        raise UserError(f"{spec}: invalid policy ({e})") from None


def load_metric(spec: str) -> Expr:
    """A metric from a file (JSON from ``to_json``, a policy JSON, or a bare expression), a named
    metric, or an expression string."""
    path = Path(spec) if _is_file(spec) else None
    if spec in NAMED_FORMS:
        return parse(NAMED_FORMS[spec])
    if path is None:
        if spec.endswith(".json"):
            raise UserError(f"{spec}: metric file not found")
        return parse(spec)
    text = path.read_text(errors="replace")
    try:
        data = json.loads(text)
    except RecursionError:
        raise UserError(f"{spec}: metric file nested too deep") from None
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


_PY_INPUTS = '''

def X_from_wanda(scaler_row, seqlen):
    """X from the statistic Wanda's code keeps (``WrappedGPT.scaler_row``: the sum over a window's
    tokens of x_j^2, averaged over windows): X_j = sqrt(scaler_row_j / seqlen). Wanda's own
    |W| sqrt(scaler_row) is sqrt(seqlen) times |W| X, which ranks the same; any other metric needs
    this X to rank as it did in autoprune."""
    return (scaler_row.float() / seqlen).sqrt()


def _check(W, X, G, needs_g, needs_h, Hd, Hi):
    if W.dim() != 2:
        raise ValueError(f"W is one layer's weight (out, in), got shape {tuple(W.shape)}")
    if X.dim() != 1 or X.shape[0] != W.shape[1] or bool((X < 0).any()):
        raise ValueError("X is the root-mean-square of the layer's input over calibration tokens, one value per "
                         f"input channel: shape ({W.shape[1]},), non-negative (Wanda's scaler_row: X_from_wanda)")
    if needs_g and (G is None or G.shape != W.shape):
        raise ValueError("G is the root-mean-square over calibration windows of dL/dW (L: mean token NLL), shaped like W")
    if needs_h and (Hd is None or Hi is None or Hd.shape != X.shape or Hi.shape != X.shape):
        raise ValueError("Hd and Hi are (in,): diag(H + damp) of H = 2/n XX^T, and diag of the upper Cholesky "
                         "factor of (H + damp)^-1, damp = 0.01 mean(diag H) as SparseGPT damps")
'''


def to_python(e: Expr, name: str = "metric", policy: Policy | None = None) -> str:
    """Source of a standalone module: ``metric(W, X, G=None, Hd=None, Hi=None)`` with torch only,
    the same protected operations, its inputs stated and checked, an adapter from Wanda's
    statistic, and (from a policy) ``POLICY`` and ``ratio(block, linear)``."""
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
    g_line = "    G = G.float().to(W.device)\n" if uses_g else ""
    g_line += ("    Hd = Hd.float().to(W.device).view(1, -1)\n    Hi = Hi.float().to(W.device).view(1, -1)\n"
               if uses_h else "")
    doc = (f'"""Pruning metric exported by autoprune: {e}\n\nscore = f(W, X, G); in each output row (or N:M group) '
           f'the lowest scores are pruned.\n')
    tail = ""
    if policy is not None:
        doc += (f"\nThe policy it belongs to (POLICY): sparsity {policy.sparsity:g}, pattern {policy.pattern}, "
                f"allocation {policy.allocation}, update {policy.update}\n(none: the mask only; sparsegpt / admm: "
                "the kept weights reconstructed from the layer's Hessian, see autoprune).\n")
        tail = "\n\nPOLICY = " + pprint.pformat(policy.to_dict(), width=100, sort_dicts=False) + "\n\n\n" + _PY_RATIO
    return (doc + '"""\n\n' + _PY_PRELUDE + _PY_INPUTS + "\n\n"
            f'def {name}(W, X, G=None, Hd=None, Hi=None):\n'
            f'    """W (out, in) weight; X (in,) RMS of the layer input over calibration tokens (see X_from_wanda);\n'
            f'    G (out, in) RMS over windows of dL/dW; Hd, Hi (in,) Hessian diagonals (see _check)."""\n'
            f'    _check(W, X, G, {uses_g}, {uses_h}, Hd, Hi)\n    W = W.float()\n    X = X.float().to(W.device).view(1, -1)\n'
            f'{g_line}' + "\n".join(lines) + ("\n" if lines else "") + f"    return {out}.expand(W.shape)\n" + tail)


_PY_RATIO = '''def ratio(block, linear):
    """The fraction of ``linear``'s weights (its name within the block, e.g. "mlp.down_proj") that
    block ``block`` prunes under POLICY: its own layer ratio, else its block's. Allocations that are
    not explicit (uniform, owl, alpha) are computed from the model; uniform is the sparsity."""
    if POLICY["allocation"] == "uniform":
        return POLICY["sparsity"]
    if POLICY["block_ratios"] is None:
        raise ValueError(f"allocation {POLICY['allocation']!r} is computed from the model: apply it with autoprune")
    own = (POLICY["layer_ratios"] or [{}] * len(POLICY["block_ratios"]))[block]
    return next((r for name, r in own.items() if linear == name or linear.endswith("." + name)),
                POLICY["block_ratios"][block])
'''


_LATEX_UNARY = {"abs": r"\left|{0}\right|", "sqr": r"\left({0}\right)^{{2}}", "sqrt": r"\sqrt{{\left|{0}\right|}}",
                "log": r"\log\left(\left|{0}\right| + \epsilon\right)", "exp": r"\exp\left({0}\right)", "tanh": r"\tanh\left({0}\right)",
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


LATEX_NOTE = ("% protected as computed: epsilon = 1e-8; a zero denominator becomes +-epsilon; exp's argument "
              "is clamped at 80;\n% mms and zscore add epsilon to their denominators; X is the RMS of the layer "
              "input per channel\n")


def latex_policy(policy: Policy) -> str:
    """The rest of a policy, as LaTeX comments under its formula."""
    lines = [f"% sparsity {policy.sparsity:g}, pattern {policy.pattern}, update {policy.update}, "
             f"allocation {policy.allocation}"]
    if policy.allocation == "owl":
        lines[0] += f" (lambda {policy.owl_lambda:g}, M {policy.owl_m:g})"
    if policy.block_ratios is not None:
        lines.append("% block ratios: " + ", ".join(f"{r:.4f}" for r in policy.block_ratios))
    for i, own in enumerate(policy.layer_ratios or ()):
        if own:
            lines.append(f"% block {i}: " + ", ".join(f"{n} {r:.4f}" for n, r in own))
    return "\n".join(lines) + "\n"


def export_metric(e: Expr, fmt: str, meta: dict | None = None, policy: Policy | None = None) -> str:
    if fmt == "json":
        return to_json(e, meta, policy)
    if fmt == "python":
        return to_python(e, policy=policy)
    if fmt == "latex":
        return to_latex(e) + "\n" + LATEX_NOTE + (latex_policy(policy) if policy is not None else "")
    raise UserError(f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")
