"""Mixture-of-experts, Conv1D and offloaded pruning on random tiny models."""

import pytest
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models.layers import decoder_blocks, prunable_linears
from autoprune.pruning.allocation import block_ratios, by_routed_tokens
from autoprune.pruning.engine import blocks_linears, dense_blockwise, model_sparsity, prune_linear, prune_sequential
from autoprune.pruning.policy import Policy
from autoprune.pruning.stats import LayerStats, StatsCollector
from tests.tiny_models import tiny_model as _model

WINDOWS = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))


def _reference_expert_inputs(model) -> dict[str, tuple[torch.Tensor, int]]:
    """(sum of x^2, tokens) per expert matrix, recorded from the F.linear calls of the experts'
    eager forward: each call's weight is one expert's slice, found by its address."""
    names = {}
    for name, unit in blocks_linears_flat(model).items():
        if unit.kind == "expert":
            names[unit.weight.data_ptr(), tuple(unit.weight.shape)] = name
    seen: dict[str, tuple[torch.Tensor, int]] = {}
    linear = nn.functional.linear

    def spy(x, w, b=None):
        name = names.get((w.data_ptr(), tuple(w.shape)))
        if name is not None:
            sq, n = seen.get(name, (0, 0))
            seen[name] = (sq + (x.float() ** 2).sum(0), n + x.shape[0])
        return linear(x, w, b)

    nn.functional.linear = spy
    try:
        with torch.no_grad():
            model(WINDOWS, use_cache=False)
    finally:
        nn.functional.linear = linear
    return seen


def blocks_linears_flat(model):
    return {n: u for bl in blocks_linears(model) for n, u in bl.items()}


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "qwen2_moe"])
def test_expert_statistics_are_those_of_the_routed_tokens(family):
    model = _model(family)
    model.config._experts_implementation = "eager"
    units = blocks_linears_flat(model)
    with torch.no_grad(), StatsCollector(units) as col:
        model(WINDOWS, use_cache=False)
    reference = _reference_expert_inputs(model)
    experts = [n for n, u in units.items() if u.kind == "expert"]
    assert len(experts) == 2 * 2 * 4 and set(reference) <= set(experts)
    for name in experts:
        sq, n = reference.get(name, (torch.zeros(units[name].in_features), 0))
        assert col.stats[name].tokens == n, name
        torch.testing.assert_close(col.stats[name].sq_sum, sq, rtol=1e-4, atol=1e-5)
    assert sum(col.stats[n].tokens for n in experts if ".gate_up_proj." in n) == 2 * WINDOWS.numel() * 2  # top-2, 2 blocks


def test_router_weighted_statistics_weigh_each_token_by_its_gate():
    model = _model("mixtral")
    units = blocks_linears_flat(model)
    stats = []
    for weighted in (False, True):
        with torch.no_grad(), StatsCollector(units, router_weighted=weighted) as col:
            model(WINDOWS, use_cache=False)
        stats.append(col.stats)
    for name, unit in units.items():
        plain, weighted = stats[0][name], stats[1][name]
        assert plain.tokens == weighted.tokens
        if unit.kind == "expert" and plain.tokens:
            assert (weighted.sq_sum <= plain.sq_sum + 1e-6).all() and weighted.sq_sum.sum() < plain.sq_sum.sum()
        elif unit.kind != "expert":
            torch.testing.assert_close(weighted.sq_sum, plain.sq_sum)


@pytest.mark.parametrize("method,pattern", [("wanda", "unstructured"), ("sparsegpt", "unstructured"),
                                            ("sparsegpt", "2:4")])
def test_every_expert_is_pruned_and_router_and_shared_expert_stay_dense(method, pattern):
    model = _model("qwen2_moe")
    report = prune_sequential(model, Policy.from_method(method, 0.5, pattern), WINDOWS, batch_size=2, progress=False)
    sizes = report.layer_sizes
    assert sum(sizes.values()) == sum(u.weight.numel() for u in blocks_linears_flat(model).values())
    for block in decoder_blocks(model)[1]:
        experts = block.mlp.experts
        for p in (experts.gate_up_proj, experts.down_proj):
            assert ((p == 0).flatten(1).float().mean(1) - 0.5).abs().max() < 1e-3  # each expert at the target
        assert not any((w == 0).any() for w in block.mlp.shared_expert.parameters())
        assert not (block.mlp.gate.weight == 0).any()
    assert model_sparsity(model)[0] == pytest.approx(0.5, abs=1e-4)


def test_experts_the_router_sends_fewer_tokens_lose_more():
    model = _model("mixtral")
    policy = Policy.from_method("wanda", 0.5)
    stats = dense_blockwise(model, WINDOWS, batch_size=2)
    bls = blocks_linears(model)
    tokens = {n: st.tokens for n, st in stats.items()}
    explicit = by_routed_tokens(policy, model, block_ratios(policy, bls, None), tokens)
    assert explicit.allocation == "explicit"
    for i, bl in enumerate(bls):
        for kind in ("gate_up_proj", "down_proj"):
            names = [n for n in bl if f".{kind}." in n]
            t = [tokens[n] for n in names]
            r = [dict(explicit.layer_ratios[i])[n.split(f".{i}.", 1)[1]] for n in names]
            assert sum(r) / len(r) == pytest.approx(0.5)
            assert r[t.index(min(t))] == max(r) and r[t.index(max(t))] == min(r)
    assert [len(block) for block in explicit.layer_ratios] == [8, 8]
    report = prune_sequential(model, explicit, WINDOWS, batch_size=2, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)


def test_an_expert_no_token_reaches_is_pruned_by_magnitude_to_its_ratio():
    model = _model("mixtral")
    unit = blocks_linears(model)[0]["model.layers.0.mlp.experts.down_proj.0"]
    W = unit.weight.clone()
    empty = LayerStats(torch.zeros(unit.in_features), 0, torch.zeros(unit.in_features, unit.in_features))
    prune_linear(unit, 0.5, Policy.from_method("sparsegpt", 0.5), empty, None)
    kept = unit.weight != 0
    assert kept.float().mean() == pytest.approx(0.5)
    assert torch.equal(unit.weight[kept], W[kept])  # not reconstructed
    for row, w in zip(kept, W.abs()):  # by magnitude, row by row
        assert w[row].min() >= w[~row].max()


def test_unidentifiable_experts_are_refused():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)
            self.experts_weight = nn.Parameter(torch.zeros(4, 8, 8))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])

    path, blocks = decoder_blocks(Model())
    with pytest.raises(UserError, match="cannot identify"):
        prunable_linears(blocks[0])


def test_a_router_beside_per_expert_modules_stays_dense():
    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = nn.Linear(8, 16), nn.Linear(16, 8)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Linear(8, 8)
            self.gate = nn.Linear(8, 4)  # the router: one output per expert
            self.experts = nn.ModuleList([Expert() for _ in range(4)])

    units = prunable_linears(Block())
    assert "gate" not in units and "attn" in units and len([n for n in units if n.startswith("experts.")]) == 8


def test_no_decoder_blocks_is_refused():
    with pytest.raises(UserError, match="no repeated decoder blocks"):
        decoder_blocks(nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8)))


@pytest.mark.parametrize("policy", [Policy.from_method("wanda", 0.5), Policy.from_method("sparsegpt", 0.5, "2:4")])
def test_conv1d_is_pruned_along_its_input_axis_as_a_linear_would_be(policy):
    model = _model("gpt2")
    unit = prunable_linears(decoder_blocks(model)[1][0])["mlp.c_fc"]
    assert unit.kind == "conv1d" and unit.module.weight.shape == (32, 128) and unit.weight.shape == (128, 32)
    linear = nn.Linear(32, 128, bias=False)
    linear.weight.data.copy_(unit.module.weight.data.t())
    reference = prunable_linears(nn.ModuleDict({"fc": linear}))["fc"]
    X = torch.rand(32) + 0.5
    H = torch.randn(64, 32)
    stats = LayerStats((X ** 2) * 10, 10, H.t() @ H / 32)
    prune_linear(unit, policy.sparsity, policy, stats, None)
    prune_linear(reference, policy.sparsity, policy, stats, None)
    torch.testing.assert_close(unit.module.weight.data.t(), linear.weight.data)
    assert (unit.module.weight == 0).float().mean() == pytest.approx(0.5)


@pytest.mark.parametrize("family", ["llama", "mixtral", "gpt2"])
def test_offloaded_sequential_pruning_gives_the_same_weights(family):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plain, offloaded = _model(family).to(device), _model(family)  # offloaded: the model stays in host memory
    policy = Policy(metric="wanda", sparsity=0.6, allocation="owl", update="sparsegpt")
    prune_sequential(plain, policy, WINDOWS, batch_size=2, progress=False)
    prune_sequential(offloaded, policy, WINDOWS, batch_size=2, progress=False, offload_to=device)
    assert next(offloaded.parameters()).device.type == "cpu"
    for (name, a), b in zip(plain.state_dict().items(), offloaded.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0 if device == "cpu" else 1e-5, msg=name)


def test_prune_command_on_a_mixture_of_experts_folder(tmp_path, capsys):
    """``autoprune prune`` on a Mixtral folder (stories260K's tokenizer): per-expert allocation by
    routed tokens and router-weighted statistics, the explicit policy saved, the model reloaded."""
    import json

    from transformers import AutoModelForCausalLM

    from autoprune.cli import main
    from autoprune.models import load_model
    from tests.tiny_models import configs

    config = configs()["mixtral"]
    config.vocab_size = 512
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "moe")
    load_model("stories260K").tokenizer.save_pretrained(tmp_path / "moe")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tmp_path / "moe"), "--seqlen", "64", "--calib", "tinystories:0-49",
                 "--calib-windows", "8", "--expert-allocation", "tokens", "--router-weighted", "--out", str(out)]) == 0
    policy = Policy.load(out / "autoprune_policy.json")
    assert policy.allocation == "explicit" and len({r for block in policy.layer_ratios for _, r in block}) > 1
    report = json.loads((out / "autoprune_report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert sum(".experts." in n for n in report["layer_sparsity"]) == 2 * 2 * 4
    again = AutoModelForCausalLM.from_pretrained(out)
    assert model_sparsity(again)[0] == pytest.approx(report["sparsity"])
