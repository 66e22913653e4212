"""Policies out as llm-compressor recipes and EvoPress levels (autoprune.export_recipes, export command)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.export_recipes import to_levels, to_llmcompressor
from autoprune.pruning.allocation import block_ratios, layer_ratios
from autoprune.pruning.engine import blocks_linears
from autoprune.pruning.policy import Policy
from tests.cli_check import one_line_error

EXPLICIT = Policy(metric="wanda", sparsity=0.5, allocation="explicit", block_ratios=(0.47, 0.49, 0.5, 0.51, 0.53),
                  layer_ratios=[{"mlp.down_proj": 0.45}, {}, {}, {}, {"self_attn.q_proj": 0.55}])
CALIB = ["--calib", "tinystories:0-499", "--calib-windows", "8", "--seqlen", "128"]


def _modifier(text: str) -> tuple[str, dict]:
    (name, args), = yaml.safe_load(text)["sparsity_stage"]["sparsity_modifiers"].items()
    return name, args


def _targeted(model, targets: list[str]) -> list[str]:
    """Module names ``targets`` select, as llm-compressor matches them: exact name, ``re:`` regex
    (re.match) or class name, in named_modules order."""
    def hit(name, mod, t):
        return re.match(t[3:], name) is not None if t.startswith("re:") else t in (name, type(mod).__name__)
    return [n for n, m in model.named_modules() if any(hit(n, m, t) for t in targets)]


def _ratios(policy: Policy, model) -> dict[str, float]:
    bls = blocks_linears(model)
    return layer_ratios(policy, bls, block_ratios(policy, bls))


def _per_module(args: dict, model) -> dict[str, float]:
    names = _targeted(model, args["targets"])
    sparsity = args["sparsity"]
    return dict(zip(names, sparsity if isinstance(sparsity, list) else [sparsity] * len(names)))


def test_uniform_without_model_targets_linears_but_lm_head():
    text = to_llmcompressor(Policy(metric="wanda", sparsity=0.6))
    name, args = _modifier(text)
    assert name == "WandaPruningModifier" and "NOTICE" not in text
    assert args == {"sparsity": 0.6, "mask_structure": "0:0", "targets": ["Linear"], "ignore": ["re:.*lm_head"]}


def test_explicit_gives_each_module_autoprune_ratio(stories):
    model = stories.model
    name, args = _modifier(to_llmcompressor(EXPLICIT, model))
    assert name == "WandaPruningModifier"
    assert len(args["targets"]) == 1 and args["targets"][0].startswith("re:") and args["ignore"] == ["lm_head"]
    assert _per_module(args, model) == _ratios(EXPLICIT, model)  # same modules, same order, same ratios
    assert len(set(args["sparsity"])) == 7


def test_uniform_with_model_targets_exactly_the_prunable_linears(stories):
    name, args = _modifier(to_llmcompressor(Policy.from_method("sparsegpt", 0.5), stories.model))
    assert name == "SparseGPTModifier" and args["sparsity"] == 0.5
    assert args["dampening_frac"] == 0.01 and args["block_size"] == 128
    assert _targeted(stories.model, args["targets"]) == [n for bl in blocks_linears(stories.model) for n in bl]


@pytest.mark.parametrize("pattern, structure", [("2:4", "2:4"), ("1:4", "3:4"), ("4:8", "4:8")])
def test_nm_pattern_is_llmcompressor_pruned_count(pattern, structure):
    """autoprune's N:M keeps N of every M; llm-compressor's mask_structure N:M prunes N."""
    name, args = _modifier(to_llmcompressor(Policy.from_method("sparsegpt", 0, pattern)))
    assert name == "SparseGPTModifier" and args["mask_structure"] == structure


def test_owl_recipe_holds_the_ratios_autoprune_prune_uses(stories, fresh_model, tmp_path, capsys):
    from autoprune.jobs.common import calibration_windows
    from autoprune.pruning.engine import prune_sequential

    policy = Policy(metric="wanda", sparsity=0.5, allocation="owl", owl_lambda=0.08)
    policy.save(tmp_path / "owl.json")
    out = tmp_path / "owl.yaml"
    assert main(["export", str(tmp_path / "owl.json"), "--format", "llmcompressor", "--model", "stories260K",
                 *CALIB, "--out", str(out)]) == 0
    name, args = _modifier(out.read_text())
    windows = calibration_windows(stories.tokenizer, "tinystories:0-499", 8, 128, 0)
    report = prune_sequential(fresh_model, policy, windows, progress=False)
    bls = blocks_linears(stories.model)
    expected = {n: r for r, bl in zip(report.block_ratios, bls) for n in bl}
    assert name == "WandaPruningModifier" and len(set(report.block_ratios)) == 5
    assert _per_module(args, stories.model) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("metric, update, expected", [
    ("mul(sqr(W), X)", "none", "WandaPruningModifier"),
    ("ria", "none", "WandaPruningModifier"),
    ("magnitude", "none", "WandaPruningModifier"),  # MagnitudePruningModifier prunes nothing in oneshot
    ("mul(sqr(W), X)", "admm", "SparseGPTModifier"),
    ("wanda", "sparsegpt", "SparseGPTModifier"),
    ("sparsegpt", "admm", "SparseGPTModifier"),
])
def test_inexpressible_policy_gets_stated_fallback(metric, update, expected, tmp_path, capsys):
    Policy(metric=metric, sparsity=0.5, update=update).save(tmp_path / "p.json")
    assert main(["export", str(tmp_path / "p.json"), "--format", "llmcompressor"]) == 0
    captured = capsys.readouterr()
    assert _modifier(captured.out)[0] == expected
    notice = [line for line in captured.out.splitlines() if line.startswith("# NOTICE: ")]
    assert len(notice) == 1 and f"{expected} stands in" in notice[0] and repr(metric) in notice[0]
    assert captured.err.count("\n") == 1 and captured.err.startswith("autoprune: ") and expected in captured.err


@pytest.mark.parametrize("metric", ["wanda", "mul(abs(W), X)", "sqrt(mul(X, abs(W)))"])
def test_wanda_equivalent_metric_is_exact(metric, capsys, tmp_path):
    Policy(metric=metric, sparsity=0.5).save(tmp_path / "p.json")
    assert main(["export", str(tmp_path / "p.json"), "--format", "llmcompressor"]) == 0
    captured = capsys.readouterr()
    assert _modifier(captured.out)[0] == "WandaPruningModifier"
    assert "NOTICE" not in captured.out and captured.err == ""


def test_levels_round_trip(stories, tmp_path):
    """Each module's level, read back as EvoPress does (``name: level``), gives its ratio within half a step."""
    EXPLICIT.save(tmp_path / "p.json")
    out = tmp_path / "levels.txt"
    assert main(["export", str(tmp_path / "p.json"), "--format", "levels", "--model", "stories260K",
                 "--out", str(out)]) == 0
    ratios = _ratios(EXPLICIT, stories.model)
    units = {n: u for bl in blocks_linears(stories.model) for n, u in bl.items()}
    weights_diff = int(0.5 * 0.5 / 8 * stories.model.config.hidden_size ** 2)  # EvoPress's default
    levels = {}
    with open(out) as f:
        for line in f:
            name, level = line.split(":")  # EvoPress's reader
            levels[name.strip()] = int(level)
    assert list(levels) == list(ratios) and len(set(levels.values())) > 3
    for name, level in levels.items():
        step = weights_diff / units[name].weight.numel()
        assert abs(level) <= 8 and abs(0.5 + level * step - ratios[name]) <= step / 2 + 1e-12


def test_levels_refuse_ratio_beyond_the_grid(stories):
    wide = Policy(metric="wanda", sparsity=0.5, allocation="explicit", block_ratios=(0.2, 0.5, 0.5, 0.5, 0.8))
    with pytest.raises(UserError, match="beyond EvoPress's levels"):
        to_levels(wide, stories.model)
    assert to_levels(wide, stories.model, weights_diff=2000).count("\n") == 35


@pytest.fixture(scope="module")
def blockless(stories, tmp_path_factory):
    """A Llama folder with no decoder blocks (num_hidden_layers=0)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("blockless")
    cfg = LlamaConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=0,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(path)
    stories.tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("case, extra, match", [
    ("metric", ["--format", "llmcompressor"], "unknown policy keys"),
    ("name", ["--format", "llmcompressor"], "policy file not found"),
    ("explicit", ["--format", "llmcompressor"], "needs --model"),
    ("uniform", ["--format", "levels"], "needs --model"),
    ("short", ["--format", "llmcompressor", "--model", "stories260K"], "the model has 5 blocks"),
    ("uniform", ["--format", "levels", "--model", "BLOCKLESS"], "no repeated decoder blocks"),
    ("uniform", ["--format", "levels", "--model", "stories260K", "--levels", "0"], "levels must be positive"),
])
def test_bad_input_is_one_line_exit_2(case, extra, match, blockless, tmp_path, capsys):
    files = {"metric": tmp_path / "metric.json", "explicit": tmp_path / "explicit.json",
             "uniform": tmp_path / "uniform.json", "short": tmp_path / "short.json"}
    files["metric"].write_text(json.dumps({"format": "autoprune-metric", "expression": "mul(abs(W), X)"}))
    EXPLICIT.save(files["explicit"])
    Policy(sparsity=0.5).save(files["uniform"])
    Policy(sparsity=0.5, allocation="explicit", block_ratios=(0.5, 0.5, 0.5)).save(files["short"])
    extra = [str(blockless) if a == "BLOCKLESS" else a for a in extra]
    one_line_error(capsys, ["export", str(files.get(case, "wanda")), *extra], match)


def test_gpt2_conv1d_is_refused_by_llmcompressor_but_has_levels():
    """llm-compressor 0.14 prunes Linear and ConvNd only; it would skip GPT-2's Conv1D silently."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(UserError, match="Conv1D"):
        to_llmcompressor(Policy(sparsity=0.5), model)
    assert to_levels(Policy(sparsity=0.5), model).count(": 0\n") == 8
