"""Apply a structured plan to a model in place, calibrated block by block.

Order: the plan's blocks are dropped first (by default those with the lowest Block Influence on the
dense model); then,
block by block on the outputs of the already shrunk blocks before it (the sequential protocol of
SparseGPT and SlimGPT), the block's attention loses its least important KV groups (scored on the
block's inputs, o_proj reconstructed from its input Gram), then its MLP its least important
channels (scored on the inputs the shrunk attention now gives, down_proj reconstructed), and the
shrunk block's outputs become the next block's inputs. Per block, the calibration windows pass
up to o_proj, up to down_proj, then through the whole block; one block's statistics are in memory
at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoprune.models.layers import decoder_blocks
from autoprune.pruning.engine import run_block, block_args, capture_block_inputs, collect_gradients, gradient_windows
from autoprune.structured.importance import (ACTIVATION, OBS, Importance, InputMoments, StopBlock, block_influence,
                                             keep_top, obs_keep, structure_scores)
from autoprune.structured.layout import ATTENTION, MLP, Layout, Plan, check_plan, discover
from autoprune.structured.reconstruct import compensate
from autoprune.structured.surgery import (apply_config, config_changes, drop_blocks, expand_slices, remove_channels,
                                          remove_kv_groups)


@dataclass(frozen=True)
class ShrinkReport:
    plan: Plan
    dropped_blocks: tuple[int, ...]  # indices in the dense model
    block_influence: tuple[float, ...]  # of the dense model's blocks; () unless it chose the dropped ones
    kept_kv_groups: tuple[tuple[int, ...], ...]  # per kept block; () when no head was removed
    params_before: int
    params_after: int
    seconds: float


def parameters(model: nn.Module) -> int:
    """Parameters, tied ones once."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def dense_block_influence(model: nn.Module, windows: Tensor, batch_size: int = 8) -> list[float]:
    """Block Influence of every decoder block of ``model`` on ``windows``."""
    _, blocks = decoder_blocks(model)
    dev = next(model.parameters()).device

    def run():
        for batch in windows.split(batch_size):
            model(batch.to(dev), use_cache=False)

    return block_influence(blocks, run)


def _moments(block: nn.Module, i: int, linears: dict[str, nn.Linear], reader: str, inputs: list[list]) -> dict:
    """Input moments of ``linears`` over ``inputs``; block ``i`` runs only up to ``reader``."""
    with torch.no_grad(), InputMoments(linears, reader, stop=True) as col:
        for item in inputs:
            args, kwargs = block_args(item, i)
            try:
                block(item[0], *args, **kwargs)
            except StopBlock:
                pass
    return col.moments


def shrink_model(model: nn.Module, plan: Plan, windows: Tensor, importance: Importance = Importance(ACTIVATION),
                 reconstruct: bool = True, damp: float = 0.01, batch_size: int = 8, progress: bool = False,
                 influence: list[float] | None = None, name: str | None = None) -> ShrinkReport:
    """Shrink ``model`` in place by ``plan``, calibrated on ``windows`` (n, seqlen); ``influence``:
    the dense model's Block Influence when already known."""
    t0 = time.perf_counter()
    layout = discover(model)
    name = name or type(model).__name__
    check_plan(plan, layout, name)
    before = parameters(model)
    drop: list[int] = []
    if plan.drop:
        drop = list(plan.drop)
    elif plan.blocks:
        influence = influence or dense_block_influence(model, windows, batch_size)
        drop = sorted(sorted(range(layout.blocks), key=lambda i: influence[i])[:plan.blocks])
    kept = [i for i in range(layout.blocks) if i not in drop]
    changes = config_changes(model, layout, plan, kept)  # refuses before anything changes
    if drop:
        drop_blocks(model, layout, drop)
    kept_groups = _shrink_widths(model, layout, plan, windows, importance, reconstruct, damp, batch_size, progress)
    apply_config(model, changes)
    return ShrinkReport(plan, tuple(drop), tuple(influence or ()) if drop and not plan.drop else (), kept_groups, before,
                        parameters(model), time.perf_counter() - t0)


@torch.no_grad()
def _shrink_widths(model: nn.Module, layout: Layout, plan: Plan, windows: Tensor, importance: Importance,
                   reconstruct: bool, damp: float, batch_size: int, progress: bool) -> tuple[tuple[int, ...], ...]:
    if not (plan.kv_groups or plan.channels):
        return ()
    path, blocks = decoder_blocks(model)
    grads = None
    if importance.needs_gradients:
        grads = collect_gradients(model, gradient_windows(windows), batch_size, progress)
    inputs = capture_block_inputs(model, blocks[0], windows, batch_size)
    kept_groups = []
    for i, block in enumerate(tqdm(blocks, desc="shrink", disable=not progress, leave=False)):
        for sub, names, groups, remove in ((layout.attention, ATTENTION, layout.kv_heads, plan.kv_groups),
                                           (layout.mlp, MLP, layout.channels, plan.channels)):
            if not remove:
                continue
            mod = block.get_submodule(sub)
            linears = {n: getattr(mod, n) for n in names}
            rows, reader = names[:-1], names[-1]
            moments = _moments(block, i, linears, reader, inputs)
            g = None if grads is None else {n: grads[f"{path}.{i}.{sub}.{n}"] for n in names}
            size = layout.n_rep * layout.head_dim if sub == layout.attention else 1
            if importance.spec == OBS:
                keep = obs_keep(linears[reader].weight.data, moments[reader].S, groups, remove, damp)
            else:
                keep = keep_top(structure_scores(importance, linears, rows, reader, moments, groups, g), remove)
            W = None
            if reconstruct:
                W = compensate(linears[reader].weight.data, moments[reader].S, expand_slices(keep, size), damp)
            if sub == layout.attention:
                remove_kv_groups(mod, layout, keep, W)
                kept_groups.append(tuple(keep.tolist()))
            else:
                remove_channels(mod, keep, W)
        run_block(block, i, inputs)
    return tuple(kept_groups)
