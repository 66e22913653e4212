"""Is a shrunk model faster? Parameters, prefill and greedy-decode tokens per second of structured
plans against the dense model, measured on this machine (CPU, or the GPU when one is present).

Each plan's model is the dense one cut to the plan's shapes (``structured.speedup.cut``): speed
depends on the shapes only, so calibration is not needed to time it. Per batch size, every model
runs a ``--prompt``-token prompt then ``--new-tokens`` greedy steps with a KV cache, all models
interleaved in each of ``--repeats`` rounds; medians are printed, and each plan's decode speed-up
is the median over rounds of dense time / plan time in the same round.

    python benchmarks/structured_speed.py --model smollm2-135m
    python benchmarks/structured_speed.py --plans "blocks=10;heads=0.34,channels=0.5" --batches 1,8,32
"""

from __future__ import annotations

import argparse
import statistics


def parse_plan(text: str, layout):
    from autoprune.structured import Plan

    kw = dict(part.split("=") for part in text.split(",") if part)
    return Plan(int(kw.get("blocks", 0)), round(float(kw.get("heads", 0)) * layout.kv_heads),
                round(float(kw.get("channels", 0)) * layout.channels))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--plans", default="blocks=8;channels=0.5;heads=0.34,channels=0.25;blocks=4,channels=0.25",
                    help="';'-separated plans: blocks=N, heads=FRACTION, channels=FRACTION")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the machine is shared)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from autoprune.commands import quiet_libraries
    from autoprune.models import load_model
    from autoprune.structured import Probe, discover, measure, parameters
    from autoprune.structured.layout import check_plan
    from autoprune.structured.speedup import cut

    quiet_libraries()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, "float32" if args.device in ("auto", "cpu") else "auto", args.device)
    dense = lm.model
    dev = next(dense.parameters()).device
    if dev.type == "cuda":  # half precision, as served on a GPU
        dense = dense.to(torch.bfloat16)
    layout = discover(dense)
    models = {"dense": dense}
    for text in args.plans.split(";"):
        plan = parse_plan(text, layout)
        check_plan(plan, layout, args.model)
        models[plan.describe(layout)] = cut(dense, layout, plan)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"{args.model} on {where}: prompt {args.prompt} tokens, {args.new_tokens} greedy tokens with KV cache, "
          f"{args.repeats} interleaved rounds, medians")
    batches = [int(b) for b in args.batches.split(",")]
    speeds = {b: measure(models, Probe(b, args.prompt, args.new_tokens, args.repeats)) for b in batches}
    head = f"{'plan':<44} {'params':>12}"
    for b in batches:
        head += f" | b={b}: {'prefill tok/s':>13} {'decode tok/s':>12} {'speed-up':>8}"
    print(head)
    print("-" * len(head))
    for name, model in models.items():
        row = f"{name:<44} {parameters(model):>12,}"
        for b in batches:
            s, d = speeds[b][name], speeds[b]["dense"]
            up = statistics.median(x / y for x, y in zip(d.decode_runs, s.decode_runs))
            row += f" | {'':>4} {s.prefill:>13.1f} {s.decode:>12.1f} {up:>7.2f}x"
        print(row)


if __name__ == "__main__":
    main()
