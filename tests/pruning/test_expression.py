"""Metric expressions: whitelist parser, canonical form, protected compilation, simplification, rank equivalence."""

from __future__ import annotations

import pytest
import torch

from autoprune.errors import UserError
from autoprune.pruning.expression import ARITY, NAMED_FORMS, Expr, parse
from autoprune.pruning.scoring import apply_op, compile_expr
from autoprune.pruning.masks import make_mask
from autoprune.pruning.metrics import needs_gradients, resolve_metric, ria, wanda
from autoprune.pruning.simplify import is_degenerate, rank_form, rank_key, simplify


def _data(seed: int = 0, rows: int = 12, cols: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g), torch.rand(cols, generator=g) + 0.1, torch.rand(rows, cols, generator=g)


@pytest.mark.parametrize("text", ["W", "mul(abs(W), X)", "mul(sqr(W), mms(G))", "div(W, add(0.5, X))",
                                  "sub(zscore(G), tanh(neg(-2)))", NAMED_FORMS["ria"]])
def test_canonical_round_trip(text):
    e = parse(text)
    assert parse(str(e)) == e
    assert str(parse(str(e))) == str(e)


@pytest.mark.parametrize("text, fragment", [
    ("foo(W)", "unknown primitive 'foo'"),
    ("mul(W", "expected ','"),
    ("mul(W, X) + 1", "unexpected character '+'"),
    ("__import__('os').system('rm -rf /')", "unexpected character"),
    ("import os", "unknown primitive 'import'"),
    ("abs(W, X)", "expected ')'"),
    ("lambda: W", "unexpected character ':'"),
    ("", "empty"),
    ("abs(" * 40 + "W" + ")" * 40, "nested deeper"),
    ("W X", "unexpected 'X'"),
])
def test_parser_rejects_with_one_line(text, fragment):
    with pytest.raises(UserError) as err:
        parse(text)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_named_forms_match_hand_written_metrics():
    W, X, G = _data()
    assert torch.allclose(compile_expr(parse(NAMED_FORMS["wanda"]))(W, X, G), wanda(W, X, None))
    assert torch.allclose(compile_expr(parse(NAMED_FORMS["ria"]))(W, X, G), ria(W, X, None), rtol=1e-5)
    pz = compile_expr(parse(NAMED_FORMS["pruner-zero"]))(W, X, G)
    assert torch.allclose(pz, W**2 * (G - G.min()) / (G.max() - G.min() + 1e-8))


def test_protected_ops_never_emit_nan_or_inf():
    hostile = [torch.zeros(4, 8), torch.full((4, 8), 1e38), torch.full((4, 8), -1e38), torch.full((4, 8), 1e-30)]
    for a in hostile:
        for b in hostile:
            for op, arity in ARITY.items():
                out = apply_op(op, [a, b][:arity], (4, 8))
                assert torch.isfinite(out).all(), (op, a[0, 0], b[0, 0])
    W, X, G = _data()
    for text in ["div(W, sub(X, X))", "exp(exp(exp(W)))", "log(sub(W, W))", "zscore(0.5)", "sqr(sqr(sqr(div(W, 0))))"]:
        assert torch.isfinite(compile_expr(parse(text))(W, X, G)).all()


def test_compiled_scores_have_weight_shape_and_need_g():
    W, X, G = _data()
    assert compile_expr(parse("X"))(W, X, G).shape == W.shape
    assert compile_expr(parse("2"))(W, X, G).shape == W.shape
    with pytest.raises(UserError, match="uses G"):
        compile_expr(parse("mul(W, G)"))(W, X, None)


@pytest.mark.parametrize("text, simple", [
    ("neg(neg(W))", "W"), ("sqrt(sqr(W))", "abs(W)"), ("sqr(sqrt(W))", "abs(W)"), ("exp(log(W))", "abs(W)"),
    ("log(exp(W))", "W"), ("abs(abs(neg(W)))", "abs(W)"), ("sub(W, W)", "0"), ("add(X, X)", "mul(2, X)"),
    ("mul(abs(W), X)", "mul(X, abs(W))"), ("mms(zscore(add(W, 0.5)))", "mms(W)"), ("add(W, neg(G))", "sub(W, G)"),
    ("mul(2, 0.5)", "1"), ("abs(mul(W, X))", "mul(X, abs(W))"), ("sqr(neg(W))", "sqr(W)"),
    ("div(W, 0.5)", "mul(2, W)"), ("mul(2, mul(0.5, W))", "W"), ("div(mul(2, W), X)", "mul(2, div(W, X))"),
    ("mul(mul(2, W), G)", "mul(2, mul(G, W))"), ("mul(W, W)", "sqr(W)"),
])
def test_simplify_rules(text, simple):
    assert str(simplify(parse(text))) == simple


@pytest.mark.parametrize("text, form", [
    ("sqrt(mul(abs(W), X))", "mul(X, abs(W))"), ("mul(2, W)", "W"), ("mul(-0.5, W)", "neg(W)"),
    ("add(W, rowsum(G))", "W"), ("sub(rowsum(abs(W)), W)", "neg(W)"), ("div(G, rowsum(abs(W)))", "G"),
    ("sigmoid(tanh(exp(W)))", "W"), ("log(W)", "abs(W)"), ("mms(mul(sqr(W), X))", "mul(X, sqr(W))"),
    ("mul(abs(W), div(mul(X, div(G, 0.5)), 0.7))", "mul(abs(W), mul(G, X))"),
    # a constant anywhere in a sum rises to its top, where it drops out
    ("add(add(add(0.5, exp(W)), mul(X, G)), log(G))", "add(add(exp(W), mul(G, X)), log(G))"),
    ("add(add(exp(W), mul(X, G)), log(G))", "add(add(exp(W), mul(G, X)), log(G))"),
    ("sub(add(2, W), G)", "sub(W, G)"),
    # not rank-equivalent: must stay
    ("neg(W)", "neg(W)"), ("add(W, X)", "add(W, X)"), ("mul(W, X)", "mul(W, X)"), ("mul(W, rowsum(W))", "mul(W, rowsum(W))"),
])
def test_rank_form(text, form):
    assert rank_key(parse(text)) == form


@pytest.mark.parametrize("text", [
    "sqrt(mul(abs(W), X))", "mul(2, W)", "mul(-0.5, W)", "add(W, rowsum(G))", "sub(rowsum(abs(W)), W)",
    "div(G, rowsum(abs(W)))", "sigmoid(mul(0.5, W))", "log(mul(W, G))", "zscore(mul(sqr(W), mms(G)))",
    "exp(div(abs(W), X))", "add(mul(X, abs(W)), 2)", "mul(exp(rowsum(W)), W)",
    "add(add(add(0.5, exp(W)), mul(X, W)), G)", "sub(add(2, W), G)",
])
@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_rank_form_gives_the_same_mask(text, nm):
    for seed in range(3):
        W, X, G = _data(seed)
        a = make_mask(compile_expr(parse(text))(W, X, G), 0.5, nm)
        b = make_mask(compile_expr(rank_form(parse(text)))(W, X, G), 0.5, nm)
        assert torch.equal(a, b), (text, str(rank_form(parse(text))))


def test_degenerate_metrics():
    for text in ["rowsum(W)", "sub(W, W)", "2", "mms(rowsum(G))", "mul(W, 0)"]:
        assert is_degenerate(parse(text)), text
    for text in ["X", "W", "colsum(W)", "mul(W, rowsum(W))"]:
        assert not is_degenerate(parse(text)), text


def test_resolve_metric_accepts_expressions():
    W, X, G = _data()
    assert resolve_metric("wanda") is wanda
    assert torch.equal(resolve_metric("mul(abs(W), X)")(W, X, G), wanda(W, X, None))
    assert needs_gradients("pruner-zero") and needs_gradients("mul(W, G)")
    assert not needs_gradients("wanda") and not needs_gradients("mul(abs(W), X)")
    with pytest.raises(UserError, match="unknown metric 'foo'"):
        resolve_metric("foo")
    with pytest.raises(UserError, match="unknown primitive"):
        resolve_metric("bar(W)")
    assert Expr("W").height == 0 and len(parse("mul(W, X)")) == 3
