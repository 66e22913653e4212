"""Metric export (JSON, standalone Python, LaTeX), metric files, and the export / prune --metric commands."""

from __future__ import annotations

import json

import pytest
import torch

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.export import export_metric, from_tree, load_metric, metric_spec, to_latex, to_python, to_tree
from autoprune.pruning.expression import NAMED_FORMS, compile_expr, parse

EXPRESSIONS = ["mul(abs(W), X)", NAMED_FORMS["ria"], NAMED_FORMS["pruner-zero"], "div(log(W), sub(2, exp(G)))",
               "zscore(add(sigmoid(W), tanh(mul(0.5, X))))", "X", "0.5"]


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_python_export_runs_without_autoprune_and_matches(text):
    e = parse(text)
    namespace: dict = {}
    exec(compile(to_python(e), "<exported>", "exec"), namespace)  # the module we generated ourselves
    g = torch.Generator().manual_seed(0)
    W, X, G = torch.randn(6, 8, generator=g), torch.rand(8, generator=g), torch.rand(6, 8, generator=g)
    assert torch.equal(namespace["metric"](W, X, G), compile_expr(e)(W, X, G))
    assert "autoprune" not in to_python(e).split('"""')[2]  # no import of this package


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_json_round_trip(text, tmp_path):
    e = parse(text)
    assert from_tree(to_tree(e)) == e
    path = tmp_path / "m.json"
    path.write_text(export_metric(e, "json", {"pattern": "2:4"}))
    assert load_metric(str(path)) == e
    assert json.loads(path.read_text())["meta"] == {"pattern": "2:4"}


def test_latex():
    assert to_latex(parse("mul(abs(W), X)")) == r"\left|W\right| \cdot X"
    assert to_latex(parse("mul(sqr(W), mms(G))")) == r"\left(W\right)^{2} \cdot \operatorname{mms}\left(G\right)"
    assert to_latex(parse("div(W, add(X, 1))")) == r"\frac{W}{X + 1}"
    assert to_latex(parse("mul(add(W, G), neg(X))")) == r"\left(W + G\right) \cdot \left(-X\right)"


def test_metric_files_are_data(tmp_path):
    bad_tree = tmp_path / "t.json"
    bad_tree.write_text(json.dumps({"tree": {"op": "system", "args": [{"terminal": "W"}]}}))
    with pytest.raises(UserError, match="unknown or malformed node"):
        load_metric(str(bad_tree))
    code = tmp_path / "code.py"
    code.write_text("import os\nos.system('echo pwned')\n")
    with pytest.raises(UserError, match="not a metric file"):
        load_metric(str(code))
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"metric": "mul(sqr(W), mms(G))", "sparsity": 0.5}))
    assert str(load_metric(str(policy))) == "mul(sqr(W), mms(G))"
    assert metric_spec("wanda") == "wanda" and metric_spec("sqrt(mul(W,W))") == "sqrt(mul(W, W))"
    with pytest.raises(UserError, match="not found"):
        load_metric(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("arg, fragment", [
    ("foo(W)", "unknown primitive 'foo'"), ("mul(W,", "unexpected end of input"), ("print(1); W", "unexpected character"),
])
def test_export_command_rejects_bad_input(arg, fragment, capsys):
    assert main(["export", arg]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_export_command_writes_formats(tmp_path, capsys):
    assert main(["export", "pruner-zero", "--format", "latex"]) == 0
    assert "operatorname{mms}" in capsys.readouterr().out
    out = tmp_path / "m.json"
    assert main(["export", "mul(abs(W), X)", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["expression"] == "mul(abs(W), X)"


def test_prune_with_a_metric_file(tmp_path, stories):
    metric = tmp_path / "metric.json"
    assert main(["export", "sqrt(mul(sqr(W), X))", "--out", str(metric)]) == 0
    out = tmp_path / "pruned"
    args = ["prune", "--model", "stories260K", "--dtype", "float32", "--device", "cpu", "--seqlen", "64",
            "--calib", "tinystories:0-499", "--calib-windows", "4", "--sparsity", "0.5", "--out", str(out)]
    assert main(args + ["--metric", str(metric)]) == 0
    saved = json.loads((out / "autoprune_policy.json").read_text())
    assert saved["metric"] == "sqrt(mul(sqr(W), X))"
    report = json.loads((out / "autoprune_report.json").read_text())
    assert abs(report["sparsity"] - 0.5) < 1e-3
    bad = tmp_path / "bad.json"
    bad.write_text('{"expression": "evil(W)"}')
    assert main(args[:-1] + [str(tmp_path / "other"), "--metric", str(bad)]) == 2
