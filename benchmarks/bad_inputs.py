"""Bad input, as a hostile new user types it: every command, one line on stderr, exit code 2, no
traceback, nothing written.

    python benchmarks/bad_inputs.py

Each case runs ``autoprune ...`` in a fresh folder holding a few prepared files (a truncated
weights file, a file of binary data, a deeply nested metric file, a file where a folder is
expected, ...); the table shows the exit code, the message, and whether anything was created.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

AUTOPRUNE = os.path.join(os.path.dirname(sys.executable), "autoprune")
M = ["--model", "stories260K"]
SEARCH = ["search", *M, "--budget", "1m"]
PRUNE = ["prune", *M, "--seqlen", "64", "--calib", "tinystories:0-20", "--calib-windows", "2"]
SHRINK = ["shrink", *M, "--seqlen", "64", "--calib", "tinystories:0-20", "--calib-windows", "2", "--out", "o"]
CASES = [
    (["eval", "--model", "no-such-model"], "unknown model"),
    (["eval", "--model", "someone/some-model"], "hub id offline"),
    (["eval", "--model", "truncated.bin"], "truncated llama2.c weights"),
    (["eval", "--model", "corrupt.gguf"], "corrupt GGUF"),
    (["eval", "--model", "notafolder/"], "missing folder"),
    (["eval", *M, "--data", "binary.txt"], "data that is not UTF-8 text"),
    (["eval", *M, "--data", "nonesuch"], "unknown data set"),
    (["eval", *M, "--data", "tinystories:5-2"], "reversed document range"),
    (["eval", *M, "--seqlen", "0"], "zero seqlen"),
    (["eval", *M, "--seqlen", "-5"], "negative seqlen"),
    (["eval", *M, "--batch-size", "0"], "zero batch size"),
    (["eval", *M, "--device", "cuda:7"], "missing GPU"),
    (["eval", *M, "--dtype", "float8"], "unknown dtype"),
    ([*PRUNE, "--sparsity", "1.5", "--out", "o"], "sparsity above 1"),
    ([*PRUNE, "--sparsity", "nan", "--out", "o"], "sparsity NaN"),
    ([*PRUNE, "--pattern", "2:4", "--sparsity", "0.7", "--out", "o"], "N:M with another sparsity"),
    ([*PRUNE, "--pattern", "4:2", "--out", "o"], "N > M"),
    ([*PRUNE, "--method", "obs", "--out", "o"], "unknown method"),
    ([*PRUNE, "--metric", "deep.json", "--out", "o"], "metric file nested 10,000 deep"),
    ([*PRUNE, "--metric", "add(" * 3000 + "W" + ", X)" * 3000, "--out", "o"], "inline metric 3,000 deep"),
    ([*PRUNE, "--metric", "mul(W, X)" + " " * 100_000, "--out", "o"], "inline metric 100 kB"),
    ([*PRUNE, "--metric", "__import__('os')", "--out", "o"], "code as a metric"),
    ([*PRUNE, "--policy", "binary.txt", "--out", "o"], "a policy that is binary"),
    ([*PRUNE, "--policy", "folder", "--out", "o"], "a folder as the policy"),
    ([*PRUNE, "--out", "afile"], "out is a file"),
    ([*PRUNE, "--out", "/proc/nope"], "out unwritable"),
    ([*PRUNE, "--calib-windows", "0", "--out", "o"], "zero calibration windows"),
    ([*PRUNE, "--expert-allocation", "tokens", "--out", "o"], "expert allocation, no experts"),
    ([*SEARCH, "--budget", "0s"], "zero budget"),
    ([*SEARCH, "--budget", "-1h"], "negative budget"),
    ([*SEARCH, "--budget", "8 hours"], "malformed budget"),
    ([*SEARCH, "--strategies", "gp,magic"], "unknown strategy"),
    ([*SEARCH, "--workers", "0"], "zero workers"),
    ([*SEARCH, "--proxy-windows", "-1"], "negative proxy windows"),
    ([*SEARCH, "--gpus-per-worker", "2"], "GPUs that are not there"),
    ([*SEARCH, "--select", "wikitext2", "--eval", "wikitext2"], "selection on the evaluation data"),
    ([*SEARCH, "--spaces", "afile"], "spaces not a folder"),
    ([*SEARCH, "--spaces", "badspaces"], "malformed space file"),
    ([*SEARCH, "--tracking-uri", "http://127.0.0.1:9"], "unreachable tracking server"),
    ([*SEARCH, "--log-candidates", "some"], "unknown log mode"),
    (["search", "--resume", "--out", "nothing-here"], "resume of nothing"),
    (["leaderboard"], "no store here"),
    (["leaderboard", "--tracking-uri", "sqlite:///binary.txt"], "not an MLflow store"),
    (["leaderboard", "--top", "0"], "zero rows"),
    (["ui", "--port", "70000"], "port out of range"),
    (["ui"], "ui without a store"),
    (["export", "foo(W)"], "unknown primitive"),
    (["export", "deep.json"], "deeply nested metric file"),
    (["export", "policy.json", "--format", "llmcompressor"], "recipe of an OWL policy without --model"),
    (["export", "binary.txt", "--format", "levels", *M], "levels of a binary file"),
    ([*SHRINK, "--speedup", "50"], "a speed-up out of reach"),
    ([*SHRINK, "--speedup", "0.5"], "a speed-up below 1"),
    ([*SHRINK, "--heads", "0.25"], "a head fraction no KV grouping gives"),
    ([*SHRINK, "--blocks", "5"], "every block dropped"),
    ([*SHRINK], "nothing to remove"),
    ([*SHRINK, "--speedup", "1.5", "--blocks", "1"], "a speed-up and a plan at once"),
    ([*SHRINK, "--speedup", "1.5", "--trials", "0"], "zero trials"),
    ([*SHRINK, "--speedup", "1.5", "--select", "tinystories:30-60", "--eval", "tinystories:30-60"],
     "chosen on the data reported on"),
    ([*SHRINK[:-1], "interrupted", "--speedup", "1.5"], "resume under other settings"),
    ([*SHRINK[:-1], "damaged", "--speedup", "1.5"], "a damaged search journal"),
    (["shrink", "--model", "gpt2", "--heads", "0.5", "--out", "o"], "heads GPT-2's fused attention lacks"),
    (["shrink", "--model", "gpt2", "--channels", "0.5", "--out", "o"], "channels of an ungated MLP"),
    (["frobnicate"], "unknown command"),
]


DATA = Path(os.environ.get("AUTOPRUNE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def prepare(d: Path) -> None:
    (d / "truncated.bin").write_bytes(b"\x01\x02\x03")
    (d / "tok512.model").write_bytes((DATA / "models" / "stories260K" / "tok512.model").read_bytes())
    (d / "corrupt.gguf").write_bytes(b"GGUF" + os.urandom(64))
    (d / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (d / "deep.json").write_text('{"tree": ' + '{"op": "abs", "args": [' * 10000 + '{"terminal": "W"}' + "]}" * 10000 + "}")
    (d / "afile").write_text("a file, not a folder\n")
    (d / "folder").mkdir()
    (d / "badspaces").mkdir()
    (d / "badspaces" / "gp.yaml").write_text("population: [8\n")
    (d / "policy.json").write_text('{"metric": "wanda", "sparsity": 0.5, "allocation": "owl"}\n')
    for name, line in (("interrupted", '{"kind": "facts", "facts": {"model": "stories260K", "calib_windows": 99}}'),
                       ("damaged", "\x00\x01 not a journal")):  # search.jsonl of structured.journal
        (d / name).mkdir()
        (d / name / "search.jsonl").write_text(line + "\n")


def tiny_gpt2(d: Path) -> None:
    """A 2-block GPT-2 (fused c_attn, Conv1D, no gated MLP) saved as a folder, with a tokenizer."""
    from autoprune.commands import quiet_libraries

    quiet_libraries()
    from transformers import GPT2Config, GPT2LMHeadModel

    from autoprune.models import load_model

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=512, n_positions=128, bos_token_id=1, eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(d)
    load_model("stories260K").tokenizer.save_pretrained(d)


def main() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "AUTOPRUNE_DATA_DIR": str(DATA)}
    ok = 0
    print(f"{'case':40} {'exit':>4} {'lines':>5} {'wrote':>5}  message")
    with tempfile.TemporaryDirectory() as shared:
        tiny_gpt2(Path(shared) / "gpt2")
        for argv, label in CASES:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                prepare(d)
                (d / "gpt2").symlink_to(Path(shared) / "gpt2")
                before = {p.relative_to(d) for p in d.rglob("*")}
                p = subprocess.run([AUTOPRUNE, *argv], cwd=d, capture_output=True, text=True, env=env, timeout=300)
                wrote = sorted(str(q.relative_to(d)) for q in d.rglob("*") if q.relative_to(d) not in before)
            lines = [line for line in p.stderr.splitlines() if line.strip()]
            good = p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr and not wrote
            ok += good
            message = lines[-1][:110] if lines else ""
            print(f"{label:40} {p.returncode:>4} {len(lines):>5} {len(wrote):>5}  {message}" + ("" if good else "   <-- FAIL"))
    print(f"{ok} of {len(CASES)} refused cleanly (exit 2, one line, no traceback, nothing written)")

if __name__ == "__main__":
    main()
