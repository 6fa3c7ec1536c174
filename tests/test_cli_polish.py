"""Polish a learner notices (issue 15, section 5): a status line for long commands, positions past the mask's
size refused, explorer titles cut at words."""

import io
import time

import pytest

from attnlab import cli, progress
from attnlab.viz.explorer import short_title


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["global", "--tokens", "0,20"], "--tokens token 20 is out of range: the mask has 6 keys (positions 0..5)"),
    (["global:0,20"], "token 20 is out of range"),
    (["causal & global:0,7"], "token 7 is out of range"),
    (["padding", "--length", "9"], "--length must be in 0..6"),
])
def test_positions_past_the_mask_are_refused(argv, message, capsys, tmp_path):
    code, out, err = run(capsys, "mask", *argv, "--n", "6", "--out", str(tmp_path / "m.png"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""


def test_positions_inside_the_mask_draw(capsys, tmp_path):
    code, out, _ = run(capsys, "mask", "global", "--tokens", "0,5", "--n", "6", "--out", str(tmp_path / "m.png"))
    assert code == 0 and "global_tokens([0, 5])" in out


def test_status_is_silent_for_quick_work_and_shows_slow_steps():
    err = io.StringIO()
    with progress.Status("job", after=5.0, stream=err) as s:
        s.step("quick")
    assert err.getvalue() == ""
    err = io.StringIO()
    with progress.Status("job", after=0.05, stream=err) as s:
        s.step("slow step")
        for _ in range(100):                       # wait for the watcher (no timing is asserted)
            if err.getvalue():
                break
            time.sleep(0.02)
        s.step("slow step")                        # the same step again is not printed twice
    assert err.getvalue() == "job: slow step\n"


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_status_on_a_terminal_redraws_one_line_and_erases_it():
    err = Tty()
    with progress.Status("job", after=0.0, stream=err) as s:
        s.step("one")
        s.step("two")
    text = err.getvalue()
    assert "\n" not in text and text.count("\r") == 3 and text.endswith("\r\x1b[K")
    assert "job: one" in text and "job: two" in text


def test_faithfulness_reports_progress_on_stderr(monkeypatch, capsys):
    monkeypatch.setattr(progress, "SHOW_AFTER", 0.0)
    code, out, err = run(capsys, "faithfulness", "--limit", "2")
    assert code == 0 and "sentence 2/2" in err and "sentence 2/2" not in out and "Kendall" in out


@pytest.mark.parametrize("text, limit", [("The committee postponed the vote until everyone had read it.", 30),
                                         ("one two three", 60), ("a" * 90, 60), ("word " * 30, 61)])
def test_titles_are_cut_at_word_boundaries(text, limit):
    title = short_title(text, limit)
    assert len(title) <= limit + 1
    if len(" ".join(text.split())) <= limit:
        assert title == " ".join(text.split())
    elif " " in text.strip():
        kept = title.removesuffix("\u2026")
        assert title.endswith("\u2026") and text.startswith(kept) and text[len(kept)] in " ,.;:"
