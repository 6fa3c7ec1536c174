"""`attnlab explore --serve` (issue 14): a busy port, a port out of range or a non-loopback host is one line on
stderr with exit code 2; idle connections are closed after the idle timeout and cost no thread each."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from attnlab import cli
from attnlab.viz import explorer


def _page():
    return explorer.explorer_html(explorer.demo_data(4))


def test_a_busy_port_is_one_line(tmp_path, capsys):
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        code = cli.main(["explore", "--demo", "--out", str(tmp_path / "p.html"), "--serve", "--port", str(port)])
    finally:
        taken.close()
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in captured.err
    assert "--port 0 for a free one" in captured.err and (tmp_path / "p.html").exists()


@pytest.mark.parametrize("argv, message", [(["--port", "70000"], "expected an integer in [0, 65535], got 70000"),
                                           (["--port", "-5"], "expected an integer in [0, 65535], got -5"),
                                           (["--idle-timeout", "nan"], "--idle-timeout must be a finite number > 0"),
                                           (["--host", "0.0.0.0"], "host must be a loopback address")])
def test_bad_serve_options_are_one_line(tmp_path, capsys, argv, message):
    try:
        code = cli.main(["explore", "--demo", "--out", str(tmp_path / "p.html"), "--serve", *argv])
    except SystemExit as exit_:                                  # argparse's own one-line error
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_idle_connections_are_closed_and_cost_no_thread_each():
    page = _page()
    server = explorer.serve(page, port=0, block=False, idle_timeout=0.3)
    port = server.server_address[1]
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
    try:
        deadline = time.monotonic() + 5
        while server.open_connections() < len(idle) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() - before <= 2           # 40 idle sockets, no thread each
        for conn in idle:                                        # each is closed by the server: recv sees EOF
            assert conn.recv(1) == b""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
            assert reply.read().decode() == page                 # and the page is still served
    finally:
        for conn in idle:
            conn.close()
        server.shutdown()
        server.server_close()
    assert server.open_connections() == 0
