"""Generic discovery of decoder blocks and their prunable weight matrices.

No code per model family. The decoder blocks are the longest ``nn.ModuleList`` of one repeated
module class that holds prunable weights (``model.layers`` in Llama, Mistral, Qwen, Phi, Gemma and
Mixtral, ``decoder.layers`` in OPT, ``transformer.h`` in GPT-2, GPT-J, Bloom and Falcon). Inside a
block a prunable *unit* is one weight matrix, seen as (out, in) whatever its storage:

- ``linear``: an ``nn.Linear``, weight (out, in);
- ``conv1d``: GPT-2's ``Conv1D``, weight stored transposed (in, out);
- ``expert``: one expert's slice of a fused mixture-of-experts parameter (transformers' experts
  modules hold ``gate_up_proj`` (E, 2I, H) and ``down_proj`` (E, H, I), or both transposed),
  named ``<param>.<expert>``; its inputs are the tokens the router sends to that expert.

Embeddings, the LM head, routers and shared experts stay dense.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from autoprune.errors import UserError

EXPERT_PARAMS = ("gate_up_proj", "up_proj", "down_proj")  # transformers' fused experts layout
DENSE = re.compile(r"(^|\.)shared_experts?(_gate)?(\.|$)|(^|\.)router(\.|$)")  # shared experts and routers stay dense


class Unit:
    """One prunable matrix. ``weight`` is a view (out, in) of the stored parameter: writing into
    it writes the model's weights."""

    __slots__ = ("module", "param_name", "expert", "transposed")

    def __init__(self, module: nn.Module, param_name: str = "weight", expert: int | None = None,
                 transposed: bool = False):
        self.module, self.param_name, self.expert, self.transposed = module, param_name, expert, transposed

    @property
    def kind(self) -> str:
        return "expert" if self.expert is not None else "conv1d" if self.transposed else "linear"

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.param_name)

    def view(self, t: Tensor) -> Tensor:
        """This unit's (out, in) slice of a tensor shaped like its parameter (the weight, a gradient)."""
        if self.expert is not None:
            t = t[self.expert]
        return t.t() if self.transposed else t

    @property
    def weight(self) -> Tensor:
        return self.view(self.param.data)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def __repr__(self) -> str:
        return f"Unit({self.kind}, {tuple(self.weight.shape)})"


def _is_conv1d(mod: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(mod, Conv1D)


def _is_experts(mod: nn.Module) -> bool:
    """A transformers experts module (``@use_experts_implementation``): fused 3-D expert weights
    with a declared layout."""
    return (hasattr(mod, "is_transposed") and hasattr(mod, "has_gate") and isinstance(getattr(mod, "num_experts", None), int)
            and isinstance(getattr(mod, "down_proj", None), nn.Parameter) and mod.down_proj.dim() == 3)


def _units(block: nn.Module) -> dict[str, Unit]:
    units: dict[str, Unit] = {}
    experts: dict[str, int] = {}  # experts container -> its number of experts
    for name, mod in block.named_modules():
        if _is_experts(mod):
            experts[name] = mod.num_experts
            for p in EXPERT_PARAMS:
                if isinstance(getattr(mod, p, None), nn.Parameter) and (p != "up_proj" or not mod.has_gate):
                    for e in range(mod.num_experts):
                        units[f"{name}.{p}.{e}"] = Unit(mod, p, e, bool(mod.is_transposed))
        elif isinstance(mod, nn.Linear):
            units[name] = Unit(mod)
        elif _is_conv1d(mod):
            units[name] = Unit(mod, transposed=True)
        elif isinstance(mod, nn.ModuleList) and len(mod) > 1 and len({type(m) for m in mod}) == 1 and name:
            experts[name] = len(mod)  # per-expert modules (each expert's linears are units of their own)
    for name, p in block.named_parameters():
        if p.dim() >= 3 and "expert" in name and not any(name.startswith(f"{e}.") for e in experts):
            raise UserError(f"{type(block).__name__}.{name}: expert weights of shape {tuple(p.shape)} in a layout "
                            "autoprune cannot identify (no transformers experts module holds them)")

    def router(name: str, unit: Unit) -> bool:
        """A linear beside an experts container, with one output per expert."""
        parent = name.rpartition(".")[0]
        return unit.kind == "linear" and any(e.rpartition(".")[0] == parent and unit.weight.shape[0] == n
                                             for e, n in experts.items())

    return {n: u for n, u in units.items() if not DENSE.search(n) and not router(n, u)}


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of the model's decoder blocks: the longest outermost list of one
    repeated class holding prunable weights (a block's own list of experts is nested in it)."""
    found = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1
             and any(isinstance(m, nn.Linear) or _is_conv1d(m) or _is_experts(m) for m in mod[0].modules())]
    outer = [(n, m) for n, m in found if not any(n.startswith(f"{o}.") for o, _ in found)]
    if not outer:
        raise UserError(f"{type(model).__name__}: no repeated decoder blocks with linear layers found")
    return max(outer, key=lambda nm: len(nm[1]))


def prunable_linears(block: nn.Module) -> dict[str, Unit]:
    """Name (relative to the block) -> prunable unit, in module order (experts: ``<param>.<e>``)."""
    return _units(block)


def blocks_linears(model: nn.Module) -> list[dict[str, Unit]]:
    """For each decoder block, full name -> prunable unit."""
    path, blocks = decoder_blocks(model)
    return [{f"{path}.{i}.{n}": u for n, u in prunable_linears(b).items()} for i, b in enumerate(blocks)]


def all_prunable(model: nn.Module) -> dict[str, Unit]:
    """Full dotted name -> unit, for every prunable unit in every block."""
    return {n: u for bl in blocks_linears(model) for n, u in bl.items()}


def input_hooks(units: dict[str, Unit], fn: Callable[[str, Tensor], None], router_weighted: bool = False) -> list:
    """Call ``fn(name, x)`` with each unit's input x (..., in) on every forward; returns the hook
    handles (remove them). An expert's input is the tokens the router sends to it, each scaled by
    its router weight when ``router_weighted`` (MoE-Pruner's statistic)."""
    handles, experts = [], {}
    for name, u in units.items():
        if u.expert is None:
            handles.append(u.module.register_forward_hook(lambda _m, inp, _out, name=name: fn(name, inp[0].detach())))
        else:
            experts.setdefault(u.module, {})[u.param_name, u.expert] = name
    for mod, names in experts.items():
        def hook(mod, args, kwargs, names=names):
            _expert_inputs(mod, args, kwargs, names, fn, router_weighted)
        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


@torch.no_grad()
def _expert_inputs(mod: nn.Module, args: tuple, kwargs: dict, names: dict[tuple[str, int], str],
                   fn: Callable[[str, Tensor], None], weighted: bool) -> None:
    """Recompute each expert's inputs as transformers' experts forward computes them."""
    keys = ("hidden_states", "top_k_index", "top_k_weights")
    hidden, index, gates = [*args, *(kwargs.get(k) for k in keys[len(args):])][:3]
    hidden = hidden.detach().reshape(-1, hidden.shape[-1])
    index, gates = index.reshape(hidden.shape[0], -1), gates.reshape(hidden.shape[0], -1)
    first = "gate_up_proj" if mod.has_gate else "up_proj"
    bias = getattr(mod, f"{first}_bias", None) if mod.has_bias else None
    for e in index.unique().tolist():
        if not 0 <= e < mod.num_experts:
            continue  # expert-parallel sentinels
        tok, pos = torch.where(index == e)
        x = hidden[tok]
        g = gates[tok, pos].unsqueeze(1).to(x.dtype) if weighted else 1
        if (first, e) in names:
            fn(names[first, e], x * g)
        if ("down_proj", e) in names:
            W = getattr(mod, first)[e]
            h = x @ W if mod.is_transposed else x @ W.t()
            if bias is not None:
                h = h + bias[e]
            h = mod._apply_gate(h) if mod.has_gate else mod.act_fn(h)
            fn(names["down_proj", e], h * g)
