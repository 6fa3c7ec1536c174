"""attnlab explain: every intermediate equals a float64 loop written from the formula; bad input -> exit 2."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from attnlab.cli import main
from attnlab.learn import explain


def loop_attention(q, k, v, allowed=None, scorer=None):
    """Oracle: plain Python loops over the formula softmax(score) @ v, fully blocked rows -> 0."""
    Lq, Lk = len(q), len(k)
    scorer = scorer or (lambda qi, kj: sum(a * b for a, b in zip(qi, kj)) / math.sqrt(len(qi)))
    weights = [[0.0] * Lk for _ in range(Lq)]
    out = [[0.0] * len(v[0]) for _ in range(Lq)]
    for i in range(Lq):
        s = [scorer(q[i], k[j]) for j in range(Lk)]
        keep = [allowed is None or allowed[i][j] for j in range(Lk)]
        if not any(keep):
            continue
        m = max(x for x, ok in zip(s, keep) if ok)
        e = [math.exp(x - m) if ok else 0.0 for x, ok in zip(s, keep)]
        z = sum(e)
        weights[i] = [x / z for x in e]
        out[i] = [sum(weights[i][j] * v[j][c] for j in range(Lk)) for c in range(len(v[0]))]
    return np.array(weights), np.array(out)


def step(ex, name):
    return next(s.value for s in ex.steps if s.name == name)


@pytest.mark.parametrize("mask", [None, "causal", "window:1", "padding:2"])
def test_dot_steps_match_loop(mask):
    q, k, v = explain.random_inputs(3, Lq=3, Lk=4, d=3, dv=2)
    ex = explain.worked_example(q, k, v, mask)
    allowed = None if mask is None else ex.allowed.tolist()
    w, out = loop_attention(q.tolist(), k.tolist(), v.tolist(), allowed)
    np.testing.assert_allclose(ex.weights, w, atol=1e-12)
    np.testing.assert_allclose(ex.output, out, atol=1e-12)
    np.testing.assert_allclose(step(ex, "dot products"), [[sum(a * b for a, b in zip(qi, kj)) for kj in k]
                                                          for qi in q], atol=1e-12)
    np.testing.assert_allclose(step(ex, "scale"), step(ex, "dot products") / math.sqrt(3))
    assert "checked: attnlab.scaled_dot_product_attention" in ex.check


def test_mask_kinds_block_the_right_cells():
    assert explain.parse_mask("causal", 3, 3)[0].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert explain.parse_mask("padding:2", 2, 3)[0].tolist() == [[1, 1, 0], [1, 1, 0]]
    assert explain.parse_mask("window:1", 3, 3)[0].tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]


def test_additive_matches_loop_with_given_weights():
    q, k, v = [[1.0, -1.0]], [[0.5, 0.0], [0.0, 2.0], [1.0, 1.0]], [[1.0], [2.0], [4.0]]
    w_q, w_k, w_v = [[1.0, 0.0], [0.5, -1.0]], [[0.0, 1.0], [1.0, 1.0]], [0.7, -0.3]

    def scorer(qi, kj):
        hidden = [math.tanh(sum(a * b for a, b in zip(w_q[r], qi)) + sum(a * b for a, b in zip(w_k[r], kj)))
                  for r in range(2)]
        return sum(a * b for a, b in zip(w_v, hidden))

    ex = explain.worked_example(q, k, v, score="additive", w_q=w_q, w_k=w_k, w_v=w_v)
    w, out = loop_attention(q, k, v, scorer=scorer)
    np.testing.assert_allclose(ex.weights, w, atol=1e-12)
    np.testing.assert_allclose(ex.output, out, atol=1e-12)
    assert "attnlab.additive_attention" in ex.check


def test_fully_masked_row_gives_zero_not_nan():
    ex = explain.worked_example([[1.0], [2.0]], [[1.0], [0.0]], [[1.0], [5.0]], mask=[[False, False], [True, True]])
    assert ex.weights[0].tolist() == [0.0, 0.0] and ex.output[0].tolist() == [0.0]
    assert np.isfinite(ex.output).all()


def test_max_subtraction_changes_nothing_and_text_has_four_digits():
    ex = explain.worked_example([[30.0, 0.0]], [[30.0, 0.0], [0.0, 1.0]], [[1.0], [0.0]])
    assert np.isfinite(ex.weights).all()
    text = explain.render(ex)
    for label in ("dot products", "scale", "max subtraction", "exponentials", "normalisation", "weights",
                  "weighted sum", "S / sqrt(2)"):
        assert label in text
    assert "0.7071" in text and "636.4" in text   # 1/sqrt(2) and 900/sqrt(2) to 4 significant digits


def test_cli_inline_prints_every_step(capsys):
    assert main(["explain", "--q", "1,0;0,1", "--k", "1,0;0,1", "--v", "1,2;3,4", "--mask", "causal"]) == 0
    out = capsys.readouterr().out
    assert "3. mask" in out and "-inf" in out and "checked:" in out and "Next: attnlab." in out


def test_cli_files_and_random(tmp_path, capsys):
    (tmp_path / "q.json").write_text(json.dumps([[1, 0]]))
    (tmp_path / "k.csv").write_text("1,0\n0,1\n")
    (tmp_path / "v.csv").write_text("2\n4\n")
    assert main(["explain", "--q", str(tmp_path / "q.json"), "--k", str(tmp_path / "k.csv"),
                 "--v", str(tmp_path / "v.csv")]) == 0
    assert "2.66" in capsys.readouterr().out          # 0.6698*2 + 0.3302*4
    (tmp_path / "all.json").write_text(json.dumps({"q": [[1, 0]], "k": [[1, 0], [0, 1]], "v": [[2], [4]]}))
    assert main(["explain", "--file", str(tmp_path / "all.json"), "--score", "additive"]) == 0
    assert "attnlab.additive_attention" in capsys.readouterr().out
    assert main(["explain", "--random", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["explain", "--random", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("argv, message", [
    (["--q", "1,0;0", "--k", "1,0", "--v", "1"], "ragged"),
    (["--q", "1,zz", "--k", "1,0", "--v", "1"], "'zz' in row 0 is not a number"),
    (["--q", "1,0", "--k", "1,0,0", "--v", "1"], "k has 3 columns but q has 2"),
    (["--q", "1,0", "--k", "1,0", "--v", "1;2"], "v has 2 rows but k has 1"),
    (["--q", "1,0", "--k", "1,0", "--v", "1", "--mask", "triangle"], "unknown mask 'triangle'"),
    (["--q", "1,0"], "give all three"),
    (["--random", "--q", "1"], "exactly one input"),
    (["--q", "nofile.json", "--k", "1", "--v", "1"], "no such file"),
    (["--q", "1,0", "--k", "1,0", "--v", "1", "--score", "additive", "--wq", "1,0"], "all of W_q"),
])
def test_cli_bad_input_one_line_exit_2(argv, message, capsys):
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_exit_code():
    r = subprocess.run([sys.executable, "-m", "attnlab.cli", "explain", "--q", "a", "--k", "1", "--v", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("attnlab explain: error:")
