"""attnlab generate and attnlab inspect on SmolLM2 (the trained decoder), through the CLI entry point."""

import re

import numpy as np

from attnlab import cli, models
from attnlab.models.generation import greedy


def test_generate_streams_the_greedy_tokens_and_measures_the_cache(capsys):
    assert cli.main(["generate", "The capital of France is", "--max-new", "4"]) == 0
    out = capsys.readouterr().out
    model = models.load("smollm2-135m")
    gen = greedy(model, model.tokenize("The capital of France is"), 4)
    assert out.startswith("The capital of France is" + model.tokenizer.decode(gen.new) + "\n")
    assert "4 new tokens (max_new)" in out and "tokens/s" in out
    cache = re.search(r"KV cache: ([\d.]+) MiB .* would hold ([\d.]+) MiB \(3\.0x\)", out)
    assert cache and np.isclose(float(cache[1]), gen.cache_bytes / 2**20, atol=0.01)
    assert "GQA: 3 key/value heads for 9 query heads" in out


def test_generate_chat_stops_at_the_end_of_turn(capsys):
    assert cli.main(["generate", "Say hello.", "--chat", "--max-new", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[chat] Say hello.\n") and "<|im_end|>" not in out


def test_generate_errors_are_one_line(capsys):
    assert cli.main(["generate", "x", "--max-new", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-new must be a positive integer, got 0" in err


def test_inspect_shows_the_decoders_causal_heads(capsys):
    assert cli.main(["inspect", "The cat sat on the mat", "--model", "smollm2-135m", "--layer", "20"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m: 30 layers x 9 heads, 6 tokens" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("L20.H")]
    assert [r[0] for r in rows] == [f"L20.H{h}" for h in range(9)]
    assert any(r[-2] == "sink" for r in rows) and all(r[-1] == "-" for r in rows)   # deep heads sink on token 0,
    #                                                                                 a type, not a failure
