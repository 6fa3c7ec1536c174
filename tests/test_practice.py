"""attnlab practice: solutions checked against independent oracles, feedback names the first wrong step, sessions
from a file and through a pseudo-terminal (pexpect)."""

import json
import math
import signal
import sys

import numpy as np
import pexpect
import pytest

from attnlab.cli import main
from attnlab.learn import practice
from attnlab.learn.practice import InvalidAnswer


def loop_softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def numbers(text):
    return [float(x) for x in text.replace(",", " ").split()]


@pytest.mark.parametrize("seed", range(12))
def test_every_solution_is_right_and_matches_an_oracle(seed):
    for ex in practice.exercises(seed):
        for part in ex.parts:
            assert part.check(part.solution).correct, (ex.kind, part.prompt)
    soft = practice.make("softmax", seed)
    scores = numbers(soft.setup.split("[")[1].split("]")[0])
    d = int(soft.setup.split("d_k = ")[1].split(".")[0])
    np.testing.assert_allclose(numbers(soft.parts[0].solution), loop_softmax([s / math.sqrt(d) for s in scores]),
                               atol=1e-3)


def test_softmax_feedback_names_the_first_wrong_step():
    ex = practice.make("softmax", 1)               # q.k = [4.5, 6, -3], d_k = 9
    check = ex.parts[0].check
    scores, scaled = [4.5, 6.0, -3.0], [1.5, 2.0, -1.0]
    as_text = lambda xs: ", ".join(f"{x:.4f}" for x in xs)
    assert "forgot to scale" in check(as_text(loop_softmax(scores))).message
    assert "normalised the scaled scores directly" in check(as_text([x / sum(scaled) for x in scaled])).message
    shifted = [math.exp(x - 2.0) for x in scaled]
    msg = check(as_text(shifted)).message
    assert "did not divide by the sum" in msg and "does not change the weights" in msg
    assert "divided by d_k = 9" in check(as_text(loop_softmax([s / 9 for s in scores]))).message
    assert "sum to 1" in check("0.5, 0.5, 0.5").message
    assert "largest score" in check("0.6, 0.3, 0.1").message
    with pytest.raises(InvalidAnswer, match="expected 3 numbers"):
        check("0.5, 0.5")
    with pytest.raises(InvalidAnswer, match="not a number"):
        check("a, b, c")


def _mask_exercise(kind):
    return next(practice.make("mask", s) for s in range(100) if f"({kind})" in practice.make("mask", s).title)


def _cells(cells):
    return " ".join(f"{i},{j}" for i, j in sorted(cells))


def test_mask_feedback():
    ex = _mask_exercise("causal")
    n = int(ex.setup.split("x")[0].split()[-1])
    future = {(i, j) for i in range(n) for j in range(n) if j > i}
    check = ex.parts[0].check
    assert check(_cells(future)).correct
    grid = ";".join("".join("1" if j > i else "0" for j in range(n)) for i in range(n))
    assert check(grid).correct
    everything = {(i, j) for i in range(n) for j in range(n)}
    assert "MAY attend" in check(_cells(everything - future)).message
    assert "blocked the past" in check(_cells({(j, i) for i, j in future})).message
    assert "diagonal is allowed" in check(_cells(future | {(i, i) for i in range(n)})).message
    assert "Row q0 first differs" in check("0,1").message
    with pytest.raises(InvalidAnswer):
        check("0-1")
    with pytest.raises(InvalidAnswer, match="outside"):
        check("9,9")

    window = _mask_exercise("window")
    left = int(window.setup.split("sliding_window(")[1].split(")")[0])
    n = int(window.setup.split("x")[0].split()[-1])
    blocked = {(i, j) for i in range(n) for j in range(n) if j > i or j < i - left}
    assert window.parts[0].check(_cells(blocked)).correct
    causal_only = {(i, j) for i in range(n) for j in range(n) if j > i}
    assert "forgot the window" in window.parts[0].check(_cells(causal_only)).message

    pad = _mask_exercise("padding")
    length = int(pad.setup.split("has ")[1].split()[0])
    n = int(pad.setup.split("x")[0].split()[-1])
    blocked = {(i, j) for i in range(n) for j in range(length, n)}
    assert pad.parts[0].check(_cells(blocked)).correct
    rows_too = blocked | {(i, j) for i in range(length, n) for j in range(n)}
    assert "padded KEYS" in pad.parts[0].check(_cells(rows_too)).message


def test_row_feedback():
    ex = practice.make("row", 1)   # q = [1, 0, 2, 0]; k, v as printed in the setup
    q = [1, 0, 2, 0]
    k = [[-2, 0, -2, -1], [2, 2, -2, -2], [-2, -2, -1, 2]]
    v = [[4, 6], [7, 2], [2, 5]]
    w = loop_softmax([sum(a * b for a, b in zip(q, kj)) / 2 for kj in k])
    out = [sum(w[j] * v[j][c] for j in range(3)) for c in range(2)]
    check = ex.parts[0].check
    assert check(f"{out[0]:.3f}, {out[1]:.3f}").correct
    assert "averaged the values" in check("4.333, 4.333").message
    raw = [sum(a * b for a, b in zip(q, kj)) for kj in k]
    w0 = loop_softmax(raw)
    assert "forgot to scale" in check(", ".join(str(sum(w0[j] * v[j][c] for j in range(3))) for c in range(2))).message


def test_shapes_feedback_and_real_shapes():
    assert practice.mha_shapes(2, 5, 12, 3) == {"q": (2, 3, 5, 4), "weights": (2, 3, 5, 5), "heads": (2, 3, 5, 4),
                                                 "output": (2, 5, 12)}
    ex = practice.make("shapes", 1)      # B=2, L=5, d_model=128, H=8
    q_part = ex.parts[0]
    assert q_part.check("2 x 8 x 5 x 16").correct
    assert "heads axis comes before" in q_part.check("(2, 5, 8, 16)").message
    assert "Dh = d_model / H = 16" in q_part.check("(2, 8, 5, 128)").message
    assert "3 axes" in ex.parts[3].check("(2, 8, 5, 16)").message


def test_cost_and_kv_feedback():
    ex = practice.make("cost", 1)
    dense, memory, window, tiled = (p.check for p in ex.parts)
    assert dense("4").correct and dense("4x").correct and not dense("2").correct
    assert "Twice the queries AND twice the keys" in dense("2").message
    assert window("2").correct and "linear in n" in window("4").message
    assert tiled("2").correct and "never stores the n x n" in tiled("4").message
    kv = practice.make("kvcache", 1)     # 48 layers, 32 heads, 4 kv heads, float32, 32768 tokens
    expected = 2 * 48 * 4 * 128 * 4 * 32768
    check = kv.parts[0].check
    assert check(str(expected)).correct and check("6 GiB").correct
    assert "only the 4 key/value heads" in check(str(expected * 8)).message
    assert "keys AND values" in check(str(expected // 2)).message
    assert "Every layer" in check(str(expected // 48)).message
    assert "mind the unit" in check("6.442 GiB").message
    with pytest.raises(InvalidAnswer):
        check("lots")


def test_written_answers_are_graded_by_claims():
    good = practice.check_written("additive", "Additive attention uses a small feed-forward network with tanh to "
                                  "score, like Bahdanau's RNN; dot-product attention uses the dot product scaled "
                                  "by sqrt(d_k), which is a fast matrix multiplication")
    assert good.correct and "4 of 5 claims" in good.message and "cannot judge your reasoning" in good.message
    weak = practice.check_written("multihead", "it has more heads so it is better at things")
    assert not weak.correct and "(not found)" in weak.message and "Model answer:" in weak.message
    with pytest.raises(InvalidAnswer):
        practice.check_written("multihead", "heads")


def test_answers_file_session_updates_score(tmp_path, capsys):
    ex = practice.exercises(2, ["softmax", "mask"])
    answers = tmp_path / "answers.txt"
    answers.write_text(f"{ex[0].parts[0].solution}\n0,0\n")
    score = tmp_path / "score.json"
    argv = ["practice", "--seed", "2", "--kind", "softmax", "--kind", "mask", "--answers", str(answers),
            "--score-file", str(score)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "This session: 1/2 right." in out and "correct." in out and "wrong." in out
    data = json.loads(score.read_text())
    assert data["totals"] == {"softmax": {"right": 1, "asked": 1}, "mask": {"right": 0, "asked": 1}}
    assert main(argv) == 0                      # totals accumulate across sessions
    assert json.loads(score.read_text())["totals"]["softmax"] == {"right": 2, "asked": 2}
    assert main(["practice", "--answers", str(tmp_path / "missing.txt")]) == 2
    score.write_text("{not json")
    assert main(argv) == 2 and "not valid JSON" in capsys.readouterr().err


def _spawn(tmp_path, *args):
    """The practice prompt in a pseudo-terminal, with Ctrl-C delivered as in a terminal even when this test run
    was started where SIGINT is ignored (a background job of a script), which its children would inherit."""
    child = pexpect.spawn(sys.executable, ["-m", "attnlab.cli", "practice", "--seed", "1", "--score-file",
                                           str(tmp_path / "s.json"), *args], encoding="utf-8", timeout=30,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return child


def test_interactive_wrong_empty_and_ctrl_d(tmp_path):
    child = _spawn(tmp_path, "--kind", "softmax", "--kind", "mask")
    child.expect("weights> ")
    child.sendline("")                                   # empty input: asked again
    child.expect(r"empty answer.*weights> ")
    child.sendline("zero, one, two")                     # unreadable: asked again, not counted
    child.expect(r"could not read that.*weights> ")
    child.sendline("0.2, 0.3, 0.5")                      # wrong: feedback, next question
    child.expect("wrong.")
    child.expect("blocked cells> ")
    child.sendeof()                                      # Ctrl-D: clean exit, score saved
    child.expect("This session: 0/1 right.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in child.before
    assert json.loads((tmp_path / "s.json").read_text())["totals"] == {"softmax": {"right": 0, "asked": 1}}


def test_interactive_right_answer_skip_and_quit(tmp_path):
    child = _spawn(tmp_path, "--kind", "softmax", "--kind", "written", "--kind", "mask")
    child.expect("weights> ")
    child.sendline(practice.make("softmax", 1).parts[0].solution)
    child.expect("correct.")
    child.expect("answer> ")
    child.sendline("skip")
    child.expect(r"\(skipped\)")
    child.expect("blocked cells> ")
    child.sendline("quit")
    child.expect("This session: 1/1 right.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_interactive_ctrl_c_is_clean(tmp_path):
    child = _spawn(tmp_path, "--kind", "mask")
    child.expect("blocked cells> ")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert "Traceback" not in child.before and child.exitstatus == 130
