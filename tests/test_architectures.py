"""Random tiny models of seven families: blocks and linears are found, every method prunes and evaluates."""

import pytest
import torch

from autoprune.evaluation import perplexity
from autoprune.models.layers import decoder_blocks, prunable_linears
from autoprune.pruning.engine import blocks_linears, model_sparsity, prune_sequential
from autoprune.pruning.policy import Policy

SMALL = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def _configs():
    import transformers as T

    return {
        "llama": T.LlamaConfig(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "mistral": T.MistralConfig(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "qwen2": T.Qwen2Config(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "opt": T.OPTConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32),
        "gpt_neox": T.GPTNeoXConfig(**SMALL, intermediate_size=64),
        "phi": T.PhiConfig(**SMALL, intermediate_size=64),
        "gemma": T.GemmaConfig(**SMALL, intermediate_size=64, num_key_value_heads=2, head_dim=8),
    }


FAMILIES = list(_configs())
EXPECTED_LINEARS = {"llama": 7, "mistral": 7, "qwen2": 7, "gemma": 7, "opt": 6, "gpt_neox": 4, "phi": 6}


def _model(family):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_configs()[family]).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery(family):
    model = _model(family)
    path, blocks = decoder_blocks(model)
    assert len(blocks) == 2
    linears = prunable_linears(blocks[0])
    assert len(linears) == EXPECTED_LINEARS[family], list(linears)
    head = model.get_output_embeddings()
    assert all(lin is not head for lin in linears.values())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,pattern", [("wanda", "unstructured"), ("sparsegpt", "2:4"), ("ria", "unstructured")])
def test_prune_and_evaluate(family, method, pattern):
    model = _model(family)
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
