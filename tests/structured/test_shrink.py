"""Structured pruning (``autoprune shrink``): structure counts, reconstruction against a slow reference,
a smaller folder plain transformers reloads, zero removal equal to dense, and bad input."""

import copy
import json

import pytest
import torch

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.evaluation import perplexity
from autoprune.structured import Importance, Plan, discover, parameters, shrink_model
from autoprune.structured.importance import Moments, block_influence, obs_keep, structure_scores
from autoprune.structured.reconstruct import compensate, compensate_reference
from autoprune.structured.speedup import frontier
from autoprune.structured.surgery import expand_slices
from tests.cli_check import one_line_error

ARGS = ["--model", "stories260K", "--seqlen", "128", "--calib", "tinystories:0-499", "--calib-windows", "8"]


def test_layout_of_stories(stories):
    lay = discover(stories.model)
    assert (lay.blocks, lay.heads, lay.kv_heads, lay.head_dim, lay.channels) == (5, 8, 4, 8, 172)
    assert lay.n_rep == 2
    assert lay.valid_kv_removals() == [0, 2, 3]  # 6 heads would not divide hidden size 64


def test_exact_structure_counts(fresh_model, stories, calib):
    dense = stories.model
    report = shrink_model(fresh_model, Plan(blocks=1, kv_groups=2, channels=86), calib)
    kept_blocks = [i for i in range(5) if i not in report.dropped_blocks]
    assert len(report.dropped_blocks) == 1 and len(fresh_model.model.layers) == 4
    cfg = fresh_model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.intermediate_size) == (4, 4, 2, 8, 86)
    for new, (old, block) in enumerate(zip(kept_blocks, fresh_model.model.layers)):
        a, m = block.self_attn, block.mlp
        assert (a.q_proj.weight.shape, a.k_proj.weight.shape, a.v_proj.weight.shape, a.o_proj.weight.shape) == (
            (32, 64), (16, 64), (16, 64), (64, 32))
        assert (m.gate_proj.weight.shape, m.up_proj.weight.shape, m.down_proj.weight.shape) == ((86, 64), (86, 64), (64, 86))
        assert a.layer_idx == new
        # query heads leave with their key/value head: each kept group's 2 query heads are the dense ones
        keep = torch.tensor(report.kept_kv_groups[new])
        d = dense.model.layers[old].self_attn
        assert torch.equal(a.q_proj.weight, d.q_proj.weight[expand_slices(keep, 16)])
        assert torch.equal(a.k_proj.weight, d.k_proj.weight[expand_slices(keep, 8)])
    per_block_removed = 2 * 32 * 64 + 2 * 16 * 64 + 3 * 86 * 64  # q + o, k + v, gate + up + down
    dense_block = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64 + 2 * 64  # q + o, k + v, MLP, norms
    assert report.params_before == parameters(dense)
    assert report.params_after == parameters(fresh_model) == report.params_before - dense_block - 4 * per_block_removed


def test_zero_removal_equals_dense(fresh_model, stories, calib, heldout):
    report = shrink_model(fresh_model, Plan(), calib, Importance("obs"))
    assert report.params_after == report.params_before
    with torch.no_grad():
        assert torch.equal(fresh_model(heldout[:4]).logits, stories.model(heldout[:4]).logits)


def test_reconstruction_matches_reference():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    W = torch.randn(5, 12, generator=g, dtype=torch.float64)
    keep = torch.tensor([0, 2, 3, 7, 8, 11])
    fast = compensate(W, X.t() @ X, keep, damp=0.05)
    assert torch.allclose(fast, compensate_reference(W, X, keep, damp=0.05), atol=1e-9)
    err = lambda Wk: ((X @ W.t() - X[:, keep] @ Wk.t()) ** 2).sum()
    assert err(compensate(W, X.t() @ X, keep, damp=0.0)) < 0.5 * err(W[:, keep])
    assert torch.equal(compensate(W, X.t() @ X, torch.arange(12)), W)  # nothing removed, nothing changed


def test_obs_removes_the_structure_cheapest_to_compensate():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 8, generator=g, dtype=torch.float64)
    X[:, 4:6] = X[:, 0:2] + 0.01 * X[:, 4:6]  # group 2 nearly repeats group 0: removing it costs almost nothing
    W = torch.randn(4, 8, generator=g, dtype=torch.float64)
    S = X.t() @ X
    keep = obs_keep(W, S, groups=4, remove=1, damp=0.0)  # groups of 2 columns
    costs = []
    for gone in range(4):
        k = torch.tensor([c for c in range(8) if c // 2 != gone])
        costs.append(((X @ W.t() - X[:, k] @ compensate(W, S, k, 0.0).t()) ** 2).sum())
    assert keep.tolist() == [q for q in range(4) if q != int(torch.stack(costs).argmin())]
    assert keep.tolist() in ([1, 2, 3], [0, 1, 3])  # one of the two near-duplicate groups goes


def test_metric_scores_sum_over_the_weights_a_structure_owns(stories):
    mlp = stories.model.model.layers[0].mlp
    linears = {n: getattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")}
    moments = {n: Moments(1, torch.zeros(lin.in_features), torch.ones(lin.in_features)) for n, lin in linears.items()}
    got = structure_scores(Importance("magnitude"), linears, ("gate_proj", "up_proj"), "down_proj", moments, 172)
    want = mlp.gate_proj.weight.abs().sum(1) + mlp.up_proj.weight.abs().sum(1) + mlp.down_proj.weight.abs().sum(0)
    assert torch.allclose(got, want)
    with pytest.raises(UserError, match="Hessian"):
        Importance("div(sqr(W), sqr(Hi))")


def test_block_influence_finds_a_block_that_does_nothing(fresh_model, calib):
    blocks = fresh_model.model.layers
    for lin in (blocks[3].self_attn.o_proj, blocks[3].mlp.down_proj):
        lin.weight.data.zero_()  # block 3 now passes its input through
    bi = block_influence(blocks, lambda: fresh_model(calib[:4]))
    assert abs(bi[3]) < 1e-6 and min(bi[:3] + bi[4:]) > 1e-3
    report = shrink_model(fresh_model, Plan(blocks=1), calib, influence=bi)
    assert report.dropped_blocks == (3,)


def test_frontier_bisects_to_the_least_removal():
    path = [Plan(n) for n in range(1, 30)]
    calls = []
    speed = lambda p: calls.append(p) or 1 + 0.05 * p.blocks
    plan, s = frontier(path, speed, 1.3)
    assert plan == Plan(6) and s == pytest.approx(1.3) and len(calls) <= 7
    assert frontier(path, speed, 9.0) is None
    lucky = lambda p: 1.31 if p.blocks == 5 else speed(p)  # one measurement let plan 5 through
    assert frontier(path, lucky, 1.3)[0] == Plan(5)
    assert frontier(path, lucky, 1.3, confirm=lambda p: (lucky(p) + speed(p)) / 2)[0] == Plan(6)


def test_shrunk_folder_reloads_with_plain_transformers(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoprune.jobs.common import evaluation_windows

    out = tmp_path / "shrunk"
    assert main(["shrink", *ARGS, "--blocks", "1", "--heads", "0.5", "--channels", "0.5", "--importance",
                 "mul(abs(W), X)", "--eval", "tinystories:500-999", "--eval-windows", "8", "--out", str(out)]) == 0
    record = json.loads((out / "autoprune_shrink.json").read_text())
    assert record["plan"] == {"blocks": 1, "kv_groups": 2, "channels": 86, "drop": []}
    assert record["config"]["importance"] == "mul(abs(W), X)" and record["speedup"] > 0
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert parameters(model) == record["report"]["params_after"] < record["report"]["params_before"]
    assert model.model.layers[0].mlp.down_proj.weight.shape == (64, 86)
    windows = evaluation_windows(AutoTokenizer.from_pretrained(out), "tinystories:500-999", 128, 8)
    assert perplexity(model, windows).perplexity == pytest.approx(record["perplexity"], rel=1e-6)
    assert record["perplexity"] > record["dense_perplexity"]


def test_dropped_blocks_fix_layer_types_and_the_cache(tmp_path):
    """A tiny Qwen2 (its config lists ``layer_types``): the shrunk folder reloads, and greedy decoding
    with the KV cache (indexed by the renumbered ``layer_idx``) matches decoding without it."""
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import configs

    torch.manual_seed(0)
    cfg = configs()["qwen2"]
    cfg.num_hidden_layers, cfg.layer_types = 4, ["full_attention"] * 4
    model = AutoModelForCausalLM.from_config(cfg).eval()
    windows = torch.randint(0, 128, (4, 16))
    shrink_model(model, Plan(blocks=2, kv_groups=1, channels=32), windows)
    assert model.config.layer_types == ["full_attention"] * 2 and model.config.num_hidden_layers == 2
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = windows[:1, :5]
    cached = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True), cached)


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    one_line_error(capsys, ["shrink", *ARGS, "--speedup", "50", "--out", str(out)], "out of reach")
    one_line_error(capsys, ["shrink", *ARGS, "--heads", "0.25", "--out", str(out)], "removable head fractions: 0.5, 0.75")
    one_line_error(capsys, ["shrink", *ARGS, "--blocks", "5", "--out", str(out)], "at least one stays")
    one_line_error(capsys, ["shrink", *ARGS, "--out", str(out)], "nothing to remove")
    one_line_error(capsys, ["shrink", *ARGS, "--speedup", "1.5", "--blocks", "1", "--out", str(out)], "do not combine")
    one_line_error(capsys, ["shrink", *ARGS, "--channels", "1.0", "--out", str(out)], "in [0, 1)")
    one_line_error(capsys, ["shrink", *ARGS, "--channels", "0.5", "--importance", "sparsegpt", "--out", str(out)],
                    "solver")
    one_line_error(capsys, ["shrink", *ARGS, "--channels", "0.5", "--importance", "foo", "--out", str(out)],
                    "unknown metric")
    assert not out.exists()
    from autoprune.jobs.shrink import ShrinkConfig

    with pytest.raises(UserError, match="unknown keys ratio"):
        ShrinkConfig.from_dict({"model": "stories260K", "out": str(out), "channels": 0.5, "ratio": 0.5})


def test_a_structure_the_model_lacks_is_refused(tmp_path, capsys):
    """GPT-2 (fused c_attn, Conv1D) has no q/k/v/o or gated MLP: heads and channels are refused."""
    from autoprune.models import load_model
    from tests.tiny_models import tiny_model

    folder = tmp_path / "gpt2"
    tiny_model("gpt2").save_pretrained(folder)
    load_model("stories260K").tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    one_line_error(capsys, ["shrink", "--model", str(folder), "--heads", "0.5", "--out", str(out)],
                    "heads cannot be removed")
    one_line_error(capsys, ["shrink", "--model", str(folder), "--channels", "0.5", "--out", str(out)],
                    "MLP channels cannot be removed")
    assert not out.exists()
    lay = discover(copy.deepcopy(tiny_model("gpt2")))
    assert lay.attention is None and lay.mlp is None and lay.blocks == 2
