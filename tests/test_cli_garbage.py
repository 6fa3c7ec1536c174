"""Garbage on the command line: one line on stderr, exit code 2, never a traceback (issue 14, CLI section).
Runs in-process through attnlab.cli.main (fast), plus the two cases only a real process shows."""

import subprocess
import sys

import pytest

from attnlab import cli

GARBAGE = [
    ["plot", "causal", "--n", "0"],
    ["plot", "causal", "--n", "abc"],
    ["plot", "heatmap", "--weights", "/etc"],
    ["practice", "--count", "100000000"],
    ["faithfulness", "--limit", "0"],
    ["failure-modes", "--limit", "-1"],
    ["failure-modes", "--limit", "100000000000000000000"],
    ["explain", "--file", "/etc"],
    ["explain", "--file", "/nonexistent/x.json"],
    ["mask", "causal", "--n", "8", "--out", "/proc/attnlab/x.png"],
    ["mask", "nope"],
    ["cost", "--preset", "nope"],
    ["tour", "--section", "nope"],
    ["serve", "--host", "0.0.0.0", "--port", "0"],
]


@pytest.mark.parametrize("argv", GARBAGE, ids=lambda a: " ".join(a))
def test_garbage_is_one_line_and_exit_2(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as stop:                   # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_an_unexpected_defect_is_still_one_line(monkeypatch, capsys):
    def boom(args):
        raise IndexError("list index out of range")

    parser_args = ["mask", "causal", "--n", "4"]
    monkeypatch.setattr(cli, "build_parser", _parser_with(boom))
    assert cli.main(parser_args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error (IndexError)" in err and "ATTNLAB_DEBUG=1" in err


def _parser_with(fn):
    build = cli.build_parser

    def parser():
        p = build()
        p.set_defaults(func=fn)
        for action in p._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(func=fn)
        return p
    return parser


def test_bare_attnlab_prints_the_usage_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: attnlab" in capsys.readouterr().out


def test_piping_into_head_ends_quietly():
    r = subprocess.run(f"{sys.executable} -m attnlab mask causal --n 400 | head -1", shell=True,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("causal") and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_python_dash_m_attnlab_cli_gives_one_line_usage_errors():
    r = subprocess.run([sys.executable, "-m", "attnlab.cli", "practice", "--count", "0"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
