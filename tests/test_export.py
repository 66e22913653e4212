"""Metric export (JSON, standalone Python, LaTeX), metric files, and the export / prune --metric commands."""

from __future__ import annotations

import json

import pytest
import torch

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.export import export_metric, from_tree, load_metric, metric_spec, to_latex, to_python, to_tree
from autoprune.pruning.expression import NAMED_FORMS, parse
from autoprune.pruning.scoring import compile_expr

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


def test_latex_is_what_the_code_computes():
    assert to_latex(parse("log(W)")) == r"\log\left(\left|W\right| + \epsilon\right)"
    assert to_latex(parse("sqrt(mul(W, X))")) == r"\sqrt{\left|W \cdot X\right|}"
    assert "epsilon = 1e-8" in export_metric(parse("log(W)"), "latex")


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


def _wanda_scaler_row(inputs: list[torch.Tensor]) -> torch.Tensor:
    """``WrappedGPT.add_batch`` of the Wanda authors' code (locuslab/wanda, lib/layerwrapper.py),
    on a linear layer's inputs, batch by batch."""
    scaler_row, nsamples = torch.zeros(inputs[0].shape[-1]), 0
    for inp in inputs:
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t().float()
        scaler_row *= nsamples / (nsamples + tmp)
        nsamples += tmp
        scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / nsamples
    return scaler_row


@pytest.mark.parametrize("text", ["mul(abs(W), X)", "add(abs(W), X)", NAMED_FORMS["ria"]])
def test_exported_metric_in_wanda_s_prune_loop_gives_autoprune_s_masks(text, stories, calib):
    """A Wanda-style caller (``prune_wanda``: W_metric from the layer's scaler_row, sorted per row,
    the lowest int(cols * sparsity) pruned) with the exported module and its X_from_wanda adapter
    prunes exactly the weights autoprune prunes."""
    import copy

    from autoprune.pruning.engine import blocks_linears, prune_linear
    from autoprune.pruning.policy import Policy
    from autoprune.pruning.stats import StatsCollector

    model = copy.deepcopy(stories.model)
    name, unit = next(iter(blocks_linears(model)[1].items()))
    inputs: list[torch.Tensor] = []
    hook = unit.module.register_forward_hook(lambda _m, inp, _out: inputs.append(inp[0].detach()))
    with torch.no_grad(), StatsCollector({name: unit}) as col:
        for batch in calib.split(4):
            model(batch, use_cache=False)
    hook.remove()
    namespace: dict = {}
    exec(compile(to_python(parse(text)), "<exported>", "exec"), namespace)
    W = unit.weight.clone()
    X = namespace["X_from_wanda"](_wanda_scaler_row(inputs), calib.shape[1])
    W_metric = namespace["metric"](W, X)
    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    W_mask = torch.zeros_like(W_metric, dtype=torch.bool)
    W_mask.scatter_(1, sort_res[1][:, :int(W_metric.shape[1] * 0.5)], True)
    prune_linear(unit, 0.5, Policy(metric=text, sparsity=0.5), col.stats[name], None)
    assert torch.equal(W_mask, unit.weight == 0)
    if text == "add(abs(W), X)":  # Wanda's own statistic, unadapted, ranks this metric differently
        raw = namespace["metric"](W, _wanda_scaler_row(inputs).sqrt())
        wrong = torch.zeros_like(W_mask).scatter_(1, torch.sort(raw, dim=-1, stable=True)[1][:, :W.shape[1] // 2], True)
        assert not torch.equal(wrong, W_mask)


def test_python_export_states_and_checks_its_inputs():
    namespace: dict = {}
    exec(compile(to_python(parse("mul(abs(W), G)")), "<exported>", "exec"), namespace)
    W = torch.randn(4, 8)
    with pytest.raises(ValueError, match="root-mean-square of the layer's input"):
        namespace["metric"](W, torch.rand(4))
    with pytest.raises(ValueError, match="dL/dW"):
        namespace["metric"](W, torch.rand(8))


def test_a_policy_exports_whole_in_every_format(tmp_path, capsys):
    from autoprune.pruning.policy import Policy

    policy = Policy(metric="mul(sqr(W), X)", sparsity=0.6, allocation="explicit", block_ratios=(0.5, 0.6, 0.7),
                    layer_ratios=[{}, {"mlp.down_proj": 0.4}, {}], update="admm")
    path = tmp_path / "best_policy.json"
    policy.save(path)
    assert main(["export", str(path), "--format", "json"]) == 0
    assert Policy.from_dict(json.loads(capsys.readouterr().out)["policy"]) == policy
    assert main(["export", str(path), "--format", "python"]) == 0
    namespace: dict = {}
    exec(compile(capsys.readouterr().out, "<exported>", "exec"), namespace)
    assert namespace["POLICY"]["update"] == "admm" and namespace["POLICY"]["pattern"] == "unstructured"
    assert namespace["ratio"](1, "mlp.down_proj") == 0.4 and namespace["ratio"](2, "self_attn.q_proj") == 0.7
    assert main(["export", str(path), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "update admm" in tex and "block ratios: 0.5000, 0.6000, 0.7000" in tex and "mlp.down_proj 0.4000" in tex
    Policy.from_method("sparsegpt", 0.5).save(path)
    assert main(["export", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["policy"]["update"] == "sparsegpt"
    assert main(["export", str(path), "--format", "python"]) == 2
    assert "not a score" in capsys.readouterr().err
