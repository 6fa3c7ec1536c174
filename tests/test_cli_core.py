"""The ``attnlab`` command line: the tour runs, and bad input is one line on stderr with exit code 2."""

import subprocess
import sys

import pytest

from attnlab import __version__, cli


def _run(*args, module="attnlab"):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def _one_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{text}"
    return lines[0]


def test_tour_runs_start_to_end(tmp_path):
    result = _run("tour", "--quick", "--no-figures", "--out", str(tmp_path / "tour"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # what issue 2 asks of the tour's core part: Q, K, V step by step, the masks drawn, MHA vs GQA vs MQA
    for expected in ("Queries, keys and values", "causal(align='bottom_right')", "causal(align='top_left')",
                     "# may attend, . blocked", "GQA", "MQA"):
        assert expected in out, f"{expected!r} missing from the tour"
    assert (tmp_path / "tour" / "index.html").is_file()


def test_tour_section_through_the_cli_module(tmp_path):
    result = _run("tour", "--section", "qkv", "--no-figures", "--out", str(tmp_path), module="attnlab.cli")
    assert result.returncode == 0, result.stderr
    assert "Queries, keys and values" in result.stdout


def test_unknown_section_is_one_line_and_exit_2():
    result = _run("tour", "--section", "nope")
    assert result.returncode == 2 and result.stdout == ""
    line = _one_line(result.stderr)
    assert line.startswith("attnlab tour: error: section must be one of") and "'nope'" in line


@pytest.mark.parametrize("args", [("--bogus",), ("tour", "--bogus"), ("tour", "--section"), ("no-such-command",)])
def test_bad_arguments_are_one_line_and_exit_2(args):
    result = _run(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert _one_line(result.stderr).startswith("attnlab")


def test_in_process_errors_and_version(capsys):
    assert cli.main(["tour", "--section", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and _one_line(captured.err).startswith("attnlab tour: error:")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"attnlab {__version__}"
    assert cli.main([]) == 2                                    # no command: the help, exit 2
    assert "tour" in capsys.readouterr().out
