"""Generic discovery of decoder blocks and their prunable linear layers.

No code per model family: the decoder blocks are the longest ``nn.ModuleList`` of one repeated
module class that holds linear layers (``model.layers`` in Llama, Mistral, Qwen2, Phi and Gemma,
``decoder.layers`` in OPT, ``gpt_neox.layers`` in GPT-NeoX). Inside a block every ``nn.Linear``
is prunable: attention and MLP projections. Embeddings and the LM head sit outside the blocks.
"""

from __future__ import annotations

from torch import nn

from autoprune.errors import UserError


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of the model's decoder blocks."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        if not any(isinstance(m, nn.Linear) for m in mod[0].modules()):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise UserError(f"{type(model).__name__}: no repeated decoder blocks with linear layers found")
    return best


def prunable_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Name (relative to the block) -> linear layer, in module order."""
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}


def all_prunable(model: nn.Module) -> dict[str, nn.Linear]:
    """Full dotted name -> linear layer, for every prunable linear in every block."""
    path, blocks = decoder_blocks(model)
    return {f"{path}.{i}.{n}": lin for i, b in enumerate(blocks) for n, lin in prunable_linears(b).items()}
