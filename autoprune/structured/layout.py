"""What structured pruning can remove from a model, found from its config and modules, and plans.

Three kinds of structure, each removed outright (smaller tensors, not zeros):

- a **block**: one decoder block of the list ``models.decoder_blocks`` finds (any family);
- a **KV group**: one key/value head with the ``heads // kv_heads`` query heads that read it
  (grouped-query attention), i.e. ``hd`` rows of k_proj and v_proj, ``n_rep * hd`` rows of q_proj
  and the same ``n_rep * hd`` input columns of o_proj;
- a **channel**: one intermediate channel of a gated MLP, i.e. one row of gate_proj and up_proj
  and the matching input column of down_proj.

Heads and channels are found in a block by the projection names of the Llama family (Llama,
Mistral, Qwen2/3, Gemma, SmolLM: ``q_proj k_proj v_proj o_proj`` and ``gate_proj up_proj
down_proj`` as ``nn.Linear``), their shapes checked against the config's ``num_attention_heads``,
``num_key_value_heads`` and ``head_dim`` and ``intermediate_size``. A model without them (fused
qkv, GPT-2's Conv1D, experts) can still lose blocks; asking it for heads or channels is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from autoprune.errors import UserError
from autoprune.models.layers import decoder_blocks

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Layout:
    path: str  # dotted path of the decoder blocks, e.g. "model.layers"
    blocks: int
    hidden: int
    attention: str | None  # path of the attention module inside a block; None: heads not removable
    heads: int = 0  # query heads per block
    kv_heads: int = 0  # key/value heads (KV groups) per block
    head_dim: int = 0
    mlp: str | None = None  # path of the gated MLP inside a block; None: channels not removable
    channels: int = 0  # intermediate size

    @property
    def n_rep(self) -> int:
        """Query heads per KV group."""
        return self.heads // self.kv_heads if self.kv_heads else 0

    def valid_kv_removals(self) -> list[int]:
        """KV groups that may be removed per block: at least one group stays, and the query heads left
        divide ``hidden`` (transformers' Llama-family configs refuse any other head count)."""
        return [r for r in range(self.kv_heads) if self.hidden % ((self.kv_heads - r) * self.n_rep) == 0]


@dataclass(frozen=True)
class Plan:
    """A uniform structured plan: ``blocks`` decoder blocks dropped, and in every kept block the same
    ``kv_groups`` KV groups (with their query heads) and ``channels`` MLP channels removed.
    ``drop``: which blocks (dense indices, sorted, ``blocks`` of them), as a search chooses them;
    empty: the ``blocks`` with the lowest Block Influence (ShortGPT)."""

    blocks: int = 0
    kv_groups: int = 0
    channels: int = 0
    drop: tuple[int, ...] = ()

    @property
    def shape(self) -> "Plan":
        """The plan without its block choice: what its speed depends on (every block has one shape)."""
        return Plan(self.blocks, self.kv_groups, self.channels)

    def describe(self, layout: Layout) -> str:
        parts = []
        if self.blocks:
            which = f" [{' '.join(map(str, self.drop))}]" if self.drop else ""
            parts.append(f"-{self.blocks}/{layout.blocks} blocks{which}")
        if self.kv_groups:
            parts.append(f"-{self.kv_groups * layout.n_rep}/{layout.heads} heads")
        if self.channels:
            parts.append(f"-{self.channels}/{layout.channels} channels")
        return ", ".join(parts) or "dense"


def text_config(model: nn.Module):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _find(block: nn.Module, names: tuple[str, ...]) -> str | None:
    for path, mod in block.named_modules():
        if all(isinstance(getattr(mod, n, None), nn.Linear) for n in names):
            return path
    return None


def discover(model: nn.Module) -> Layout:
    """The layout of ``model``; ``UserError`` when the recognised projections disagree with its config."""
    path, blocks = decoder_blocks(model)
    cfg = text_config(model)
    hidden = cfg.hidden_size
    attention, mlp = _find(blocks[0], ATTENTION), _find(blocks[0], MLP)
    heads = kv = hd = channels = 0
    if attention is not None:
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        hd = getattr(cfg, "head_dim", None) or hidden // heads
        a = blocks[0].get_submodule(attention)
        shapes = (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features, a.o_proj.in_features)
        if shapes != (heads * hd, kv * hd, kv * hd, heads * hd) or heads % kv:
            raise UserError(f"{type(model).__name__}: attention projections {shapes} do not match the config's "
                            f"{heads} heads, {kv} key/value heads of dimension {hd}")
    if mlp is not None:
        m = blocks[0].get_submodule(mlp)
        channels = m.down_proj.in_features
        if (m.gate_proj.out_features, m.up_proj.out_features) != (channels, channels):
            raise UserError(f"{type(model).__name__}: gate_proj, up_proj and down_proj disagree on the MLP width")
    return Layout(path, len(blocks), hidden, attention, heads, kv, hd, mlp, channels)


def require(layout: Layout, heads: bool, channels: bool, model_name: str) -> None:
    """``UserError`` (one line) when heads or channels are asked of a model without them."""
    if heads and layout.attention is None:
        raise UserError(f"{model_name}: heads cannot be removed: its blocks have no attention with "
                        f"{', '.join(ATTENTION)} linears")
    if channels and layout.mlp is None:
        raise UserError(f"{model_name}: MLP channels cannot be removed: its blocks have no gated MLP with "
                        f"{', '.join(MLP)} linears")


def check_plan(plan: Plan, layout: Layout, model_name: str) -> None:
    """``UserError`` (one line) for a plan the model cannot take."""
    require(layout, plan.kv_groups > 0, plan.channels > 0, model_name)
    if not 0 <= plan.blocks < layout.blocks:
        raise UserError(f"{model_name}: cannot drop {plan.blocks} of its {layout.blocks} blocks (at least one stays)")
    if plan.drop and (len(plan.drop) != plan.blocks or list(plan.drop) != sorted(set(plan.drop))
                      or not 0 <= plan.drop[0] <= plan.drop[-1] < layout.blocks):
        raise UserError(f"{model_name}: blocks to drop {list(plan.drop)} are not {plan.blocks} distinct sorted "
                        f"indices below {layout.blocks}")
    if plan.kv_groups and plan.kv_groups not in layout.valid_kv_removals():
        fractions = ", ".join(f"{r / layout.kv_heads:.4g}" for r in layout.valid_kv_removals()[1:]) or "none"
        raise UserError(f"{model_name}: removing {plan.kv_groups} of {layout.kv_heads} KV groups leaves a head count "
                        f"that does not divide hidden size {layout.hidden}; removable head fractions: {fractions}")
    if not 0 <= plan.channels < max(layout.channels, 1):
        raise UserError(f"{model_name}: cannot remove {plan.channels} of {layout.channels} MLP channels")
