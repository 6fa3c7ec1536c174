"""`attnlab inspect --hf DIR`: a local Hugging Face folder run by transformers on attnlab prints the same per-head
table as attnlab's own port of that model (MiniLM, whose package folder is a Hugging Face folder)."""

import subprocess
import sys

from attnlab import models

TEXT = "The cat sat on the mat because it was tired."


def _inspect(*args):
    return subprocess.run([sys.executable, "-m", "attnlab.cli", "inspect", *args], capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                            "PYTHONPATH": ":".join(sys.path)})


def _table(stdout):
    return [line.split() for line in stdout.splitlines() if line.strip().startswith("L0.H")]


def test_inspect_hf_folder_equals_the_native_port():
    theirs = _inspect(TEXT, "--hf", str(models.minilm_path()), "--layer", "0")
    ours = _inspect(TEXT, "--model", "all-MiniLM-L6-v2", "--layer", "0")
    assert theirs.returncode == 0 and ours.returncode == 0, theirs.stderr + ours.stderr
    rows = _table(theirs.stdout)
    assert len(rows) == 12 and rows == _table(ours.stdout)           # 2-decimal statistics, types and flags
    assert "L0.H2" in theirs.stdout


def test_inspect_hf_not_a_model_folder_is_one_line(tmp_path):
    r = _inspect(TEXT, "--hf", str(tmp_path))
    errors = [line for line in r.stderr.splitlines() if "error:" in line]     # (progress lines may precede it)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1 and "config.json" in errors[0]
