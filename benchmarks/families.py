"""Every family autoprune prunes, without code per family: random tiny configurations of eighteen
families (GPT-2's Conv1D and five mixtures of experts among them), each pruned with Wanda,
SparseGPT and SparseGPT at 2:4, saved, reloaded by plain transformers and evaluated.

    python benchmarks/families.py

Sparsity is over all prunable weights, experts included; "reloaded" is the reloaded model's
perplexity equal to the pruned one's (random weights and tokens: the perplexities only show that
the pruned model runs and differs from the dense one).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprune.commands import quiet_libraries  # noqa: E402
from autoprune.evaluation import perplexity  # noqa: E402
from autoprune.pruning.engine import blocks_linears, model_sparsity, prune_sequential  # noqa: E402
from autoprune.pruning.policy import Policy  # noqa: E402
from tests.tiny_models import FAMILIES, tiny_model  # noqa: E402

RECIPES = [("wanda", "unstructured"), ("sparsegpt", "unstructured"), ("sparsegpt", "2:4")]


def main() -> None:
    quiet_libraries()
    from transformers import AutoModelForCausalLM

    windows = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))
    print(f"{'family':10} {'units/block':>11} {'experts':>7} {'prunable':>9} {'recipe':16} {'sparsity':>8} "
          f"{'dense ppl':>9} {'pruned':>8} {'reloaded':>8}")
    for family in FAMILIES:
        for method, pattern in RECIPES:
            model = tiny_model(family)
            units = [u for bl in blocks_linears(model) for u in bl.values()]
            dense = perplexity(model, windows).perplexity
            prune_sequential(model, Policy.from_method(method, 0.5, pattern), windows, batch_size=4, progress=False)
            pruned = perplexity(model, windows).perplexity
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                again = AutoModelForCausalLM.from_pretrained(tmp).eval()
                same = abs(perplexity(again, windows).perplexity / pruned - 1) < 1e-5
                sparsity = model_sparsity(again)[0]
            print(f"{family:10} {len(units) // 2:>11} {sum(u.kind == 'expert' for u in units):>7} "
                  f"{sum(u.weight.numel() for u in units):>9} {method + ' ' + pattern:16} {sparsity:>8.4f} "
                  f"{dense:>9.2f} {pruned:>8.2f} {'yes' if same else 'NO':>8}")


if __name__ == "__main__":
    main()
