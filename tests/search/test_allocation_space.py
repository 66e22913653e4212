"""Allocation spaces: exact projection onto the target, decoding, YAML validation, per-linear ratios."""

from __future__ import annotations

import random

import pytest

from autoprune.errors import UserError
from autoprune.pruning.engine import apply_policy, collect_stats, model_sparsity
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import (KINDS, allocation_sparsity, is_attention, load_space,
                                               parse_space, project)

SIZES = tuple({"self_attn.q_proj": 4096, "self_attn.k_proj": 2048, "self_attn.o_proj": 4096,
               "mlp.up_proj": 11008, "mlp.down_proj": 11008} for _ in range(5))
N = sum(sum(b.values()) for b in SIZES)


@pytest.mark.parametrize("name", ["per_block", "depth_curve", "attn_mlp"])
@pytest.mark.parametrize("target", [0.5, 0.7, 0.333])
def test_every_candidate_meets_the_target_exactly_within_bounds(name, target):
    space = load_space(name)
    rng = random.Random(0)
    for _ in range(20):
        values = {p.name: rng.uniform(p.low, p.high) for p in space.params(len(SIZES))}
        policy = space.decode(values, Policy(sparsity=target), SIZES)
        assert policy.allocation == "explicit"
        assert round(allocation_sparsity(policy, SIZES) * N, 6) == round(target * N)
        lo, hi = space.bounds
        for block in policy.layer_ratios:
            assert all(lo - 1e-3 <= r <= hi + 1e-3 for _, r in block)


def test_shapes_of_the_parametrisations():
    base = Policy(sparsity=0.5)
    curve = load_space("depth_curve").decode({"knot0": -0.2, "knot1": 0.0, "knot2": 0.2}, base, SIZES)
    assert list(curve.block_ratios) == sorted(curve.block_ratios) and curve.block_ratios[0] < curve.block_ratios[-1]
    values = {"attn": 0.3, **{f"block{b}": 0.0 for b in range(5)}}
    split = load_space("attn_mlp").decode(values, base, SIZES)
    for block in split.layer_ratios:
        attn = [r for n, r in block if is_attention(n)]
        mlp = [r for n, r in block if not is_attention(n)]
        assert min(attn) > max(mlp)
    owl = load_space("owl").decode({"owl_lambda": 0.1, "owl_m": 6.0}, base, SIZES)
    assert (owl.allocation, owl.owl_lambda, owl.owl_m) == ("owl", 0.1, 6.0)
    assert {load_space(k).kind for k in KINDS} == set(KINDS)


def test_projection_keeps_the_order_and_clips_to_bounds():
    counts = project([0.1, 0.5, 0.9, 0.99], [100, 100, 100, 100], 0.6, (0.05, 0.9))
    assert sum(counts) == 240 and counts == sorted(counts) and max(counts) <= 90


def test_bounds_that_cannot_meet_the_target():
    with pytest.raises(UserError, match=r"bounds \[0, 0.4\] cannot meet the target sparsity 0.5"):
        project([0.5, 0.5], [10, 10], 0.5, (0.0, 0.4))
    space = parse_space("tight", {"kind": "per_block", "bounds": [0.6, 0.9]})
    with pytest.raises(UserError, match="cannot meet"):
        space.decode({f"block{b}": 0.0 for b in range(5)}, Policy(sparsity=0.5), SIZES)


def test_bad_space_input_gives_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="unknown allocation space 'nope'"):
        load_space("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("per_block:\n  kind: per_block\n   span: [0.1\n")
    with pytest.raises(UserError, match="malformed YAML at line") as e:
        load_space("per_block", bad)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown keys spam"):
        parse_space("x", {"kind": "per_block", "spam": 1})
    with pytest.raises(UserError, match="kind must be one of"):
        parse_space("x", {"kind": "zigzag"})
    with pytest.raises(UserError, match="bounds must be"):
        parse_space("x", {"kind": "per_block", "bounds": [0.9, 0.1]})
    with pytest.raises(UserError, match="file not found"):
        load_space("per_block", tmp_path / "missing.yaml")


def test_layer_ratios_round_trip_and_reach_the_engine(fresh_model, calib):
    names = {"self_attn.q_proj": 0.8, "mlp.down_proj": 0.2}
    policy = Policy(metric="wanda", sparsity=0.5, allocation="explicit", block_ratios=[0.5] * 5,
                    layer_ratios=[names] * 5)
    assert Policy.from_dict(policy.to_dict()) == policy
    with pytest.raises(UserError, match="one entry per block"):
        Policy(sparsity=0.5, allocation="explicit", block_ratios=[0.5] * 5, layer_ratios=[names])
    apply_policy(fresh_model, policy, collect_stats(fresh_model, calib, progress=False))
    _, per_layer = model_sparsity(fresh_model)
    for name, s in per_layer.items():
        want = next((r for rel, r in names.items() if name.endswith(rel)), 0.5)
        assert s == pytest.approx(want, abs=1e-3), name
    bad = Policy(sparsity=0.5, allocation="explicit", block_ratios=[0.5] * 5, layer_ratios=[{"nope": 0.1}] * 5)
    with pytest.raises(UserError, match="does not have: nope"):
        apply_policy(fresh_model, bad, collect_stats(fresh_model, calib, progress=False))
