"""The demo runs under torchrun exactly as documented and reports an error within 1e-5."""

import json
import re
import subprocess
import sys


def test_torchrun_demo(tmp_path):
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "attnlab.distributed.demo", "--seq", "37", "--mask", "document", "--kv-heads", "2",
           "--repeat", "1", "--backward", "--timeout", "30", "--json", str(summary)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    error = float(re.search(r"max \|ring - single-process attnlab\| = (\S+)", done.stdout).group(1))
    assert error <= 1e-5
    data = json.loads(summary.read_text())
    assert data["world"] == 2 and abs(data["max_abs_error"] - error) <= 1e-3 * error + 1e-12
    assert [row["L_local"] for row in data["rows"]] == [19, 18]
    assert sum(row["cells"] for row in data["rows"]) == 4 * sum(n * (n + 1) // 2 for n in (10, 10, 10, 7))
