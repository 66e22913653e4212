"""Random tiny models of eighteen families, dense and mixture-of-experts: blocks and prunable units
are found without code per family, every method prunes them to the exact target over all prunable
weights (experts included), and plain transformers reloads the result."""

import pytest
import torch

from autoprune.evaluation import perplexity
from autoprune.models.layers import decoder_blocks, prunable_linears
from autoprune.pruning.engine import blocks_linears, model_sparsity, prune_sequential
from autoprune.pruning.policy import Policy
from tests.tiny_models import FAMILIES, MOE_FAMILIES, tiny_model

EXPECTED_LINEARS = {"llama": 7, "mistral": 7, "qwen2": 7, "gemma": 7, "opt": 6, "gpt_neox": 4, "phi": 6, "gemma3": 7,
                    "phi3": 4, "gpt2": 4, "gptj": 6, "falcon": 4, "bloom": 4,
                    **dict.fromkeys(MOE_FAMILIES, 4 + 2 * 4)}  # attention, and gate_up and down of 4 experts


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery(family):
    model = tiny_model(family)
    path, blocks = decoder_blocks(model)
    assert len(blocks) == 2
    linears = prunable_linears(blocks[0])
    assert len(linears) == EXPECTED_LINEARS[family], list(linears)
    head = model.get_output_embeddings()
    assert all(lin is not head for lin in linears.values())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,pattern", [("wanda", "unstructured"), ("sparsegpt", "2:4"), ("ria", "unstructured")])
def test_prune_and_evaluate(family, method, pattern):
    model = tiny_model(family)
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    dense = perplexity(model, windows).perplexity
    report = prune_sequential(model, Policy.from_method(method, 0.5, pattern), windows, batch_size=2, progress=False)
    assert model_sparsity(model)[0] == pytest.approx(0.5, abs=1e-3)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
    pruned = perplexity(model, windows).perplexity
    assert torch.isfinite(torch.tensor(pruned)) and pruned != dense
    # embeddings and head untouched
    assert (model.get_input_embeddings().weight == 0).float().mean() < 0.01
    assert len(blocks_linears(model)) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_reloads_in_plain_transformers(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    prune_sequential(model, Policy.from_method("wanda", 0.5), windows, batch_size=2, progress=False)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert model_sparsity(again)[0] == pytest.approx(0.5, abs=1e-3)
    assert perplexity(again, windows).perplexity == pytest.approx(perplexity(model, windows).perplexity, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_block_by_block_statistics_equal_a_whole_forward(family):
    """Statistics gathered block by block (captured inputs, each block with its own masks and
    rotary embeddings) equal those of the whole model's forward pass: the slow reference."""
    from autoprune.pruning.engine import collect_stats, dense_blockwise

    model = tiny_model(family)
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    whole = collect_stats(model, windows, batch_size=2, progress=False).X
    for name, st in dense_blockwise(model, windows, batch_size=2).items():
        torch.testing.assert_close(st.X, whole[name], rtol=1e-4, atol=1e-6, msg=name)
