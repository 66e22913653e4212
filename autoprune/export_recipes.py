"""A policy as another tool's input: an llm-compressor ``oneshot`` recipe, or an EvoPress level file.

llm-compressor 0.14 (vllm-project/llm-compressor, src/llmcompressor/modifiers/pruning/sparsegpt/
sgpt_base.py, the base of ``WandaPruningModifier`` and ``SparseGPTModifier``):
- ``sparsity`` is a float, or a list with one float per module that ``targets`` matches, in
  ``model.named_modules()`` order; a dict is refused. ``targets`` and ``ignore`` hold module names,
  ``re:`` regexes (``re.match``) or class names. Unknown keys are refused (``sequential_targets``
  is an argument of ``oneshot``). Stage keys must end in ``_stage`` and groups in ``_modifiers``.
- ``mask_structure: "N:M"`` prunes N of every M weights ("0:0": unstructured); autoprune's N:M
  keeps N, so its ``2:4`` is llm-compressor's ``"2:4"`` and its ``1:4`` is ``"3:4"``.
- its own OWL (``sparsity_profile: owl``, ``owl_m``, ``owl_lmbda``) fails inside ``oneshot``
  ("Cannot invoke event before initializing"), so OWL's ratios are computed here on calibration
  windows, as ``autoprune prune`` computes them, and written per module.
- ``MagnitudePruningModifier`` is a training-time schedule: in ``oneshot`` it prunes nothing, so
  magnitude, like every metric llm-compressor lacks, gets a stand-in, named in the recipe.

EvoPress (IST-DASLab/EvoPress: prune.py and its pruner write the database; evo_prune_search.py
and the evaluation scripts read a configuration): module W's level l in [-L, L] (L = ``num_levels``,
8 by default, fewer where the sparsity would leave [0, 1]) holds W pruned to
    s_l = S + l Δ / numel(W),   Δ = ``weights_diff`` = int(0.5 min(S, 1 - S) / L * hidden²),
and a configuration is one ``module name: level`` line per module, nothing else (its reader
splits every line at ':').
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from autoprune.errors import UserError
from autoprune.models import decoder_blocks
from autoprune.pruning.allocation import block_ratios, layer_ratios
from autoprune.pruning.engine import blocks_linears, dense_blockwise
from autoprune.pruning.policy import Policy

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # llm-compressor's PRUNABLE_LAYER_TYPES
SPARSEGPT_ARGS = {"dampening_frac": 0.01, "block_size": 128}  # autoprune.pruning.sparsegpt's defaults
DOES = {"WandaPruningModifier": "Wanda's mask |W|*||X||, no weight update",
        "SparseGPTModifier": "SparseGPT's OBS mask and update"}


def _is_wanda(metric: str) -> bool:
    """True for Wanda and the metrics with its rank form (``sqrt(mul(X, abs(W)))``, ...): the same masks."""
    from autoprune.pruning.expression import NAMED_FORMS, parse
    from autoprune.pruning.simplify import rank_key

    if metric == "sparsegpt":
        return False
    return rank_key(parse(NAMED_FORMS.get(metric, metric))) == rank_key(parse(NAMED_FORMS["wanda"]))


def modifier(policy: Policy) -> tuple[str, str | None]:
    """(llm-compressor modifier, notice): the notice says what stands in where llm-compressor
    cannot do what the policy's metric and update do; the allocation is always the policy's."""
    metric = "wanda" if _is_wanda(policy.metric) else policy.metric
    exact = {("wanda", "none"): "WandaPruningModifier", ("sparsegpt", "sparsegpt"): "SparseGPTModifier"}
    if (metric, policy.update) in exact:
        return exact[metric, policy.update], None
    name = "SparseGPTModifier" if policy.update != "none" else "WandaPruningModifier"
    return name, (f"llm-compressor has no metric {policy.metric!r} with update {policy.update!r}: "
                  f"{name} stands in ({DOES[name]}); the allocation is the policy's")


def module_ratios(policy: Policy, model: nn.Module, windows: Tensor | None = None,
                  batch_size: int = 8) -> dict[str, float]:
    """Full module name -> ratio, as ``autoprune prune`` allocates them (OWL from the dense
    model's activations on ``windows``)."""
    bls = blocks_linears(model)
    X = None
    if policy.allocation == "owl":
        if windows is None:
            raise UserError("allocation 'owl' needs calibration data: pass --model (and --calib)")
        X = {n: st.X for n, st in dense_blockwise(model, windows, batch_size).items()}
    return layer_ratios(policy, bls, block_ratios(policy, bls, X))


def _modules(model: nn.Module, ratios: dict[str, float]) -> tuple[dict[str, float], list[str], list[str]]:
    """(ratios in model order, targets, ignore): targets is one regex where it matches exactly the
    pruned modules, else their names; ignore names the linears autoprune does not prune."""
    modules = dict(model.named_modules())
    for n in ratios:
        if not isinstance(modules.get(n), PRUNABLE):
            what = f"a {type(modules[n]).__name__}" if n in modules else "not a module of its own"
            raise UserError(f"{n}: llm-compressor prunes Linear and ConvNd modules only; this is {what}")
    ordered = {n: ratios[n] for n in modules if n in ratios}
    path, _ = decoder_blocks(model)
    rel = sorted({n[len(path) + 1:].split(".", 1)[1] for n in ratios})  # "3.mlp.up_proj" -> "mlp.up_proj"
    regex = rf"{re.escape(path)}\.\d+\.({'|'.join(map(re.escape, rel))})$"
    exact = [n for n in modules if re.match(regex, n)] == list(ordered)
    ignore = [n for n, m in modules.items() if isinstance(m, PRUNABLE) and n not in ratios]
    return ordered, [f"re:{regex}"] if exact else list(ordered), ignore


def _num(x: float) -> str:
    s = repr(float(x))
    return s if "e" not in s else f"{x:.17f}"  # YAML 1.1 (PyYAML) reads 1e-05 as a string


def _quoted(items: list[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


def to_llmcompressor(policy: Policy, model: nn.Module | None = None, windows: Tensor | None = None) -> str:
    """The policy as a YAML recipe for llm-compressor's ``oneshot``.

    Without a model (uniform allocation only) the recipe targets every Linear but ``lm_head``."""
    name, notice = modifier(policy)
    if model is None:
        if policy.allocation != "uniform":
            raise UserError(f"allocation {policy.allocation!r} needs the model: pass --model")
        ratios, targets, ignore = {}, ["Linear"], ["re:.*lm_head"]
    else:
        ratios, targets, ignore = _modules(model, module_ratios(policy, model, windows))
    per_module = len(set(ratios.values())) > 1
    lines = ["# llm-compressor (0.14) oneshot recipe from an autoprune policy:",
             f"# metric {policy.metric}, sparsity {policy.sparsity:g}, pattern {policy.pattern}, "
             f"allocation {policy.allocation}, update {policy.update}"]
    if notice:
        lines.append(f"# NOTICE: {notice}")
    if policy.allocation == "owl":
        lines.append("# OWL's ratios computed by autoprune (llm-compressor 0.14's sparsity_profile: owl "
                     "fails in oneshot)")
    if per_module:
        lines.append("# sparsity: one value per module that targets match, in model order")
    lines += ["sparsity_stage:", "  sparsity_modifiers:", f"    {name}:"]
    if per_module:
        lines += ["      sparsity:"] + [f"        - {_num(r)}  # {n}" for n, r in ratios.items()]
    else:
        lines.append(f"      sparsity: {_num(next(iter(ratios.values()), policy.sparsity))}")
    n, m = policy.nm or (0, 0)
    lines.append(f'      mask_structure: "{m - n}:{m}"')
    if name == "SparseGPTModifier":
        lines += [f"      {k}: {v}" for k, v in SPARSEGPT_ARGS.items()]
    lines += [f"      targets: {_quoted(targets)}", f"      ignore: {_quoted(ignore)}"]
    return "\n".join(lines) + "\n"


def to_levels(policy: Policy, model: nn.Module, levels: int = 8, weights_diff: int | None = None,
              windows: Tensor | None = None) -> str:
    """EvoPress's configuration for a database built at the policy's sparsity S with ``levels``
    levels each way and ``weights_diff`` (EvoPress's default when None): each module's ratio
    rounded to its nearest level."""
    if levels < 1:
        raise UserError(f"levels must be positive, got {levels}")
    S = policy.sparsity
    if weights_diff is None:
        weights_diff = int(0.5 * min(S, 1 - S) / levels * model.config.hidden_size ** 2)
    if weights_diff <= 0:
        raise UserError(f"weights_diff must be positive, got {weights_diff}")
    units = {n: u for bl in blocks_linears(model) for n, u in bl.items()}
    lines = []
    for name, r in module_ratios(policy, model, windows).items():
        step = weights_diff / units[name].weight.numel()
        lo, hi = min(int(S // step), levels), min(int((1 - S) // step), levels)
        level = round((r - S) / step)
        if not -lo <= level <= hi:
            raise UserError(f"{name}: ratio {r:.4f} lies beyond EvoPress's levels ({S - lo * step:.4f} to "
                            f"{S + hi * step:.4f}); pass more --levels or a larger --weights-diff")
        lines.append(f"{name}: {level}")
    return "\n".join(lines) + "\n"
