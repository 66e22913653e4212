"""The prune and eval commands end to end, and their answers to bad input."""

import json
import subprocess
import sys

import pytest

from autoprune.cli import main
from tests.cli_check import one_line_error

ARGS = ["--model", "stories260K", "--seqlen", "128"]


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "wanda50"
    assert main(["prune", *ARGS, "--method", "wanda", "--sparsity", "0.5", "--calib", "tinystories:0-499",
                 "--calib-windows", "8", "--out", str(out)]) == 0
    return out


def test_pruned_folder_reloads_with_plain_transformers(pruned_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoprune.evaluation import perplexity
    from autoprune.jobs.common import evaluation_windows
    from autoprune.pruning.policy import Policy

    capsys.readouterr()
    assert main(["eval", "--model", str(pruned_dir), "--data", "tinystories:500-999", "--seqlen", "128",
                 "--windows", "16", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"perplexity", "tokens", "sparsity"} <= set(res)
    assert res["sparsity"] == pytest.approx(0.5, abs=1e-4) and res["tokens"] == 16 * 127

    model = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    tok = AutoTokenizer.from_pretrained(pruned_dir)
    windows = evaluation_windows(tok, "tinystories:500-999", 128, 16)
    assert perplexity(model, windows).perplexity == pytest.approx(res["perplexity"], rel=1e-6)
    assert Policy.load(pruned_dir / "autoprune_policy.json").metric == "wanda"
    assert json.loads((pruned_dir / "autoprune_report.json").read_text())["sparsity"] == pytest.approx(0.5)


def test_prune_with_policy_file(tmp_path, capsys):
    from autoprune.pruning.policy import Policy

    policy = tmp_path / "p.json"
    Policy(metric="magnitude", sparsity=0.6, allocation="explicit", block_ratios=(0.5, 0.55, 0.6, 0.65, 0.7)).save(policy)
    out = tmp_path / "out"
    assert main(["prune", *ARGS, "--policy", str(policy), "--calib", "tinystories:0-9", "--calib-windows", "2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "autoprune_report.json").read_text())
    assert report["block_ratios"] == [0.5, 0.55, 0.6, 0.65, 0.7]
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("argv,match", [
    (["eval", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["eval", "--model", "./missing/model.bin"], "file not found"),
    (["eval", "--model", "someone/some-model"], "cannot load hub id 'someone/some-model'"),
    (["prune", *ARGS, "--sparsity", "1.0", "--out", "x"], "sparsity must be in [0, 1)"),
    (["prune", *ARGS, "--sparsity", "-0.1", "--out", "x"], "sparsity must be in [0, 1)"),
    (["prune", *ARGS, "--pattern", "2x4", "--out", "x"], "malformed pattern '2x4'"),
    (["prune", *ARGS, "--pattern", "4:2", "--out", "x"], "malformed pattern '4:2'"),
    (["prune", *ARGS, "--method", "obs", "--out", "x"], "unknown method 'obs'"),
    (["prune", *ARGS, "--update", "obs", "--out", "x"], "unknown update 'obs'"),
    (["prune", *ARGS, "--method", "sparsegpt", "--update", "none", "--out", "x"], "needs a weight update"),
    (["eval", *ARGS, "--data", "nonesuch"], "unknown data 'nonesuch'"),
    (["eval", *ARGS, "--data", "missing.txt"], "missing.txt: data file not found"),
    (["eval", *ARGS, "--data", "tinystories:5-2"], "document range 5-2"),
    (["eval", "--model", "stories260K", "--seqlen", "100000", "--data", "tinystories:0-0"], "data too short"),
    (["prune", *ARGS, "--calib", "tinystories:0-1", "--calib-windows", "500", "--out", "x"], "gives only"),
    (["prune", *ARGS, "--policy", "nope.json", "--out", "x"], "policy file not found"),
    (["eval", *ARGS, "--device", "cuda:0"] if not __import__("torch").cuda.is_available() else
     ["eval", *ARGS, "--device", "tpu"], "device"),
    (["prune", *ARGS, "--expert-allocation", "tokens", "--out", "x"], "needs a mixture-of-experts model"),
    (["prune", *ARGS, "--expert-allocation", "few", "--out", "x"], "unknown expert allocation 'few'"),
    (["search", "--model", "stories260K", "--budget", "1m", "--gpus-per-worker", "1.5"], "whole number"),
    (["search", "--model", "stories260K", "--budget", "1m", "--gpus-per-worker", "64"], "64 GPUs"),
    (["eval", *ARGS, "--seqlen", "abc"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_one_line_exit_2(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    if match == "invalid int value" or match == "invalid choice":  # argparse exits itself
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err
    else:
        one_line_error(capsys, argv, match)


def test_prune_with_the_admm_update(capsys, tmp_path):
    """SparseGPT's mask reconstructed by ADMM: the pruned model keeps the target exactly."""
    out = tmp_path / "admm"
    assert main(["prune", *ARGS, "--method", "sparsegpt", "--update", "admm", "--sparsity", "0.6",
                 "--calib", "tinystories:0-499", "--calib-windows", "8", "--out", str(out)]) == 0
    policy = json.loads((out / "autoprune_policy.json").read_text())
    assert (policy["metric"], policy["update"]) == ("sparsegpt", "admm")
    report = json.loads((out / "autoprune_report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-4)


def test_empty_and_bad_files(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    one_line_error(capsys, ["eval", *ARGS, "--data", str(empty)], "no text")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    one_line_error(capsys, ["eval", *ARGS, "--data", str(bad)], "bad.jsonl:2: not a JSON object")
    badpolicy = tmp_path / "p.json"
    badpolicy.write_text('{"metric": "wanda", "sparsity": 0.5, "colour": "red"}')
    one_line_error(capsys, ["prune", *ARGS, "--policy", str(badpolicy), "--out", str(tmp_path / "o")],
                    "unknown policy keys: colour")
    other = tmp_path / "occupied"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    one_line_error(capsys, ["prune", *ARGS, "--out", str(other)], "not an autoprune output folder")
    assert (other / "keep.txt").read_text() == "mine"


def test_console_script_exit_code(tmp_path):
    exe = [sys.executable, "-m", "autoprune.cli"]
    proc = subprocess.run([*exe, "prune", *ARGS, "--sparsity", "2", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "autoprune: error: sparsity must be in [0, 1), got 2.0"
