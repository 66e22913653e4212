"""Remove structures outright: smaller linears, fewer blocks, and a config plain transformers reads.

Why uniform widths. transformers 5 builds every Llama-family block from the one global config
(``models/llama/modeling_llama.py``: ``LlamaDecoderLayer(config, layer_idx)`` for every index,
``LlamaAttention`` sizes q/k/v/o from ``num_attention_heads``, ``num_key_value_heads`` and
``head_dim``, ``LlamaMLP`` from ``intermediate_size``). Its new heterogeneous configs
(``integrations/heterogeneity/configuration_utils.py``, ``per_layer_config``) store per-layer
overrides, but only models written for them read them (gemma4, step3p7, dots3_note): a Llama config
with a per-layer ``intermediate_size`` fails at model construction with
``AmbiguousGlobalPerLayerAttributeError``. So a folder that unmodified transformers loads has the
same head count and MLP width in every block, and any number of blocks: a plan is uniform widths
plus a depth. ``LlamaConfig.validate_architecture`` also requires ``hidden_size`` to be a multiple
of ``num_attention_heads`` even when ``head_dim`` is explicit, which limits the removable KV groups
(``Layout.valid_kv_removals``). Dropping blocks subsets every per-layer list of the config
(``layer_types`` and the like) and renumbers the ``layer_idx`` the attention modules index the
KV cache with.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from autoprune.errors import UserError
from autoprune.structured.layout import Layout, Plan, text_config


def _sliced(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None,
            weight: Tensor | None = None) -> nn.Linear:
    """A new linear holding ``lin``'s ``rows`` x ``cols`` (or ``weight``, already that shape); the
    bias follows the rows."""
    W = lin.weight.data if rows is None else lin.weight.data[rows]
    if weight is None:
        weight = W if cols is None else W[:, cols]
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=lin.bias is not None, device=weight.device,
                    dtype=weight.dtype)
    out.weight.data.copy_(weight)
    if lin.bias is not None:
        out.bias.data.copy_(lin.bias.data if rows is None else lin.bias.data[rows])
    return out


def expand_slices(keep: Tensor, size: int) -> Tensor:
    """Indices of the ``size``-long slices of the kept structures: (k,) -> (k * size,)."""
    return (keep.unsqueeze(1) * size + torch.arange(size, device=keep.device)).reshape(-1)


def remove_kv_groups(attn: nn.Module, layout: Layout, keep: Tensor, o_weight: Tensor | None = None) -> None:
    """Keep the KV groups ``keep`` (sorted) with their query heads; ``o_weight`` (hidden, kept
    heads * head_dim): o_proj's kept columns, reconstructed (default: sliced)."""
    q_rows = expand_slices(keep, layout.n_rep * layout.head_dim)
    kv_rows = expand_slices(keep, layout.head_dim)
    attn.q_proj = _sliced(attn.q_proj, rows=q_rows)
    attn.k_proj = _sliced(attn.k_proj, rows=kv_rows)
    attn.v_proj = _sliced(attn.v_proj, rows=kv_rows)
    attn.o_proj = _sliced(attn.o_proj, cols=q_rows, weight=o_weight)
    for name, value in (("num_heads", len(keep) * layout.n_rep), ("num_key_value_heads", len(keep))):
        if isinstance(getattr(attn, name, None), int):  # families that keep the counts on the module
            setattr(attn, name, value)


def remove_channels(mlp: nn.Module, keep: Tensor, down_weight: Tensor | None = None) -> None:
    """Keep the MLP channels ``keep`` (sorted); ``down_weight`` (hidden, kept): down_proj's kept
    columns, reconstructed (default: sliced)."""
    mlp.gate_proj = _sliced(mlp.gate_proj, rows=keep)
    mlp.up_proj = _sliced(mlp.up_proj, rows=keep)
    mlp.down_proj = _sliced(mlp.down_proj, cols=keep, weight=down_weight)
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = len(keep)


def drop_blocks(model: nn.Module, layout: Layout, drop: list[int]) -> list[int]:
    """Remove the blocks ``drop``; renumber the kept blocks' ``layer_idx``; the kept indices."""
    parent_path, _, attr = layout.path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    blocks = getattr(parent, attr)
    kept = [i for i in range(len(blocks)) if i not in set(drop)]
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in kept]))
    for new, block in enumerate(getattr(parent, attr)):
        for mod in block.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new
    return kept


def config_changes(model: nn.Module, layout: Layout, plan: Plan, kept_blocks: list[int]) -> dict:
    """The config fields the shrunk model needs, validated by building the config class from them
    (``UserError`` for a shape transformers would refuse)."""
    cfg = text_config(model)
    changes = {}
    if plan.blocks:
        changes["num_hidden_layers"] = len(kept_blocks)
        for key, value in cfg.to_dict().items():  # layer_types, mlp_layer_types, no_rope_layers ...
            if "layer" in key and isinstance(value, list) and len(value) == layout.blocks:
                changes[key] = [value[i] for i in kept_blocks]
    if plan.kv_groups:
        kv = layout.kv_heads - plan.kv_groups
        changes.update(num_attention_heads=kv * layout.n_rep, num_key_value_heads=kv, head_dim=layout.head_dim)
    if plan.channels:
        changes["intermediate_size"] = layout.channels - plan.channels
    try:
        type(cfg).from_dict({**cfg.to_dict(), **changes})
    except Exception as e:  # transformers' own validation: one line for the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        raise UserError(f"{type(model).__name__}: transformers refuses the shrunk config: {first}") from None
    return changes


def apply_config(model: nn.Module, changes: dict) -> None:
    cfg = text_config(model)
    for key, value in changes.items():
        setattr(cfg, key, value)

