"""Per expert of a tiny mixture of experts: the calibration tokens the router sends it and the
fraction of its weights pruned, under a uniform allocation and under ``--expert-allocation
tokens`` (experts that see fewer tokens lose more), with and without router-weighted statistics.

    python benchmarks/moe_experts.py [--family mixtral] [--experts 8] [--sparsity 0.5]

The model is a random tiny configuration on random tokens, so the routing is uneven by chance;
the table shows the mechanics (tokens, ratios, the exact total), not a quality claim.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprune.commands import quiet_libraries  # noqa: E402
from autoprune.evaluation import perplexity  # noqa: E402
from autoprune.pruning.allocation import block_ratios, by_routed_tokens  # noqa: E402
from autoprune.pruning.engine import blocks_linears, dense_blockwise, prune_sequential  # noqa: E402
from autoprune.pruning.policy import Policy  # noqa: E402
from tests.tiny_models import tiny_model  # noqa: E402


def main() -> None:
    quiet_libraries()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="mixtral")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args()
    calib = torch.randint(0, 128, (16, 32), generator=torch.Generator().manual_seed(1))
    evalw = torch.randint(0, 128, (16, 32), generator=torch.Generator().manual_seed(2))
    policy = Policy.from_method("wanda", args.sparsity)
    results = {}
    for allocation in ("uniform", "tokens"):
        model = tiny_model(args.family, experts=args.experts)
        tokens = {n: st.tokens for n, st in dense_blockwise(model, calib, 4).items()}
        p = policy
        if allocation == "tokens":
            p = by_routed_tokens(policy, model, block_ratios(policy, blocks_linears(model)), tokens)
        report = prune_sequential(model, p, calib, 4, progress=False)
        results[allocation] = (tokens, report, perplexity(model, evalw).perplexity)
    tokens, uniform, _ = results["uniform"]
    by_tokens = results["tokens"][1]
    print(f"{'expert matrix':40} {'tokens':>6} {'uniform':>8} {'tokens':>8}")
    for name, size in uniform.layer_sizes.items():
        if ".experts." in name:
            print(f"{name:40} {tokens[name]:>6} {uniform.layer_sparsity[name]:>8.4f} {by_tokens.layer_sparsity[name]:>8.4f}")
    for allocation, (_, report, ppl) in results.items():
        print(f"{allocation:8} allocation: sparsity over all prunable weights {report.sparsity:.5f}, "
              f"perplexity on other random tokens {ppl:.3f}")


if __name__ == "__main__":
    main()
