"""The command-line garbage sweep (issue 14): every option of the subcommands that run without a model, given
garbage (empty, a word, negative, NaN, huge numbers, a folder, a path that cannot be written, an over-long name),
in-process through attnlab.cli.main. Each run must end within the alarm with exit code 0 (the garbage was a valid
value) or 2 with exactly one line on stderr that is not an "internal error" (an unexpected exception). The
subcommands that load a model (inspect, generate, failure-modes, faithfulness, serve, explore --model) were swept
by hand for the same rules (docs/robustness.md); their bad-path cases are in test_cli_garbage.py."""

from __future__ import annotations

import argparse
import signal

import pytest

from attnlab import cli

ALARM_S = 30


class Alarm(BaseException):                       # not an Exception: cli.main must not catch it
    pass


def _garbage(tmp):
    return ["", "abc", "-1", "nan", "1e308", "99999999999999999999", str(tmp), str(tmp / "missing" / "d" / "x"),
            "/proc/attnlab/x.png", "a" * 300]


# command[:label] -> the arguments of a cheap valid run; "{tmp}" is the test's folder (we may be root: never write to a
# system folder)
BASES = {
    "mask": ["causal", "--n", "4", "--out", "{tmp}/m.png"],
    "mask:document": ["document", "--n", "4", "--out", "{tmp}/m.png"],    # its default ids are built from --n
    "cost": ["--n-heads", "4", "--d-model", "64", "--seq", "128"],
    "explain": ["--q", "1,0;0,1", "--k", "1,1;0,1", "--v", "1,2;3,4"],
    "plot causal": ["--n", "4", "--out", "{tmp}/p.png"],
    "plot heatmap": ["--n", "4", "--out", "{tmp}/p.png"],
    "practice": ["--count", "1", "--score-file", "{tmp}/score.json"],
    "tour": ["--quick", "--no-figures", "--section", "scaling", "--out", "{tmp}/tour"],
    "explore": ["--demo", "--n", "8", "--out", "{tmp}/x.html"],
    "cheatsheet": ["--out", "{tmp}/c.md"],
    "bench": ["--sizes", "16", "--repeat", "5", "--heads", "1", "--head-dim", "8", "--cases", "dense",
              "--impls", "attnlab", "--out", "{tmp}/b.json"],
}
SKIP = {("explore", "--serve"), ("explore", "--port"), ("explore", "--host"), ("explore", "--idle-timeout"),
        ("explore", "--model"), ("explore", "--text"),     # the server and a real model: test_explore_serve.py
        ("bench", "--sizes"), ("bench", "--contexts")}     # a valid size runs the benchmark: test_memory_budget.py


def _subparser(path):
    p = cli.build_parser()
    path = path.split(":")[0]
    for name in path.split():
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return p


ONLY = {"mask:document": {"--n", "--lq", "--lk", "--docs"}}    # the other options are swept on mask causal


def _options(path):
    return [a.option_strings[0] for a in _subparser(path)._actions
            if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)
            and (path.split(":")[0].split()[0], a.option_strings[0]) not in SKIP
            and a.option_strings[0] in ONLY.get(path, {a.option_strings[0]})]


def _cases():
    for path in BASES:
        for option in _options(path):
            yield pytest.param(path, option, id=f"{path} {option}")


def _alarm(signum, frame):
    raise Alarm


@pytest.mark.parametrize("path, option", list(_cases()))
def test_garbage_in_every_option_is_one_line_and_exit_2(path, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))        # practice reads answers: end of input at once
    base = [a.replace("{tmp}", str(tmp_path)) for a in BASES[path]]
    if option in base:                                         # the option under test replaces the base's value
        i = base.index(option)
        del base[i:i + 2]
    problems = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for garbage in _garbage(tmp_path):
            argv = path.split(":")[0].split() + base + [option, garbage]
            signal.alarm(ALARM_S)
            try:
                code = cli.main(argv)
            except SystemExit as stop:
                code = stop.code
            except Alarm:
                code = "no answer within the alarm"
            finally:
                signal.alarm(0)
            err = capsys.readouterr().err.strip()
            lines = err.splitlines()
            if code not in (0, 2):
                problems.append(f"{option} {garbage[:40]!r}: exit {code}: {err[-200:]}")
            elif code == 2 and (len(lines) != 1 or "internal error" in err or "Traceback" in err):
                problems.append(f"{option} {garbage[:40]!r}: {len(lines)} lines: {err[-300:]}")
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not problems, "\n".join(problems)
