"""`granary status` against a real `granary serve`: the numbers it prints are the ones the server
counted for real requests; /metrics behind auth (Basic, Bearer, none, wrong) and behind TLS; one-line
errors and exit codes for an unreachable port and a port that is not Granary's; the URL derived from
the configuration; and the live display under a pseudo-terminal, redrawn until SIGINT."""

from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import bcrypt
import grpc
import pytest
from obsutil import http_url, scrape, settled
from ptyutil import finish, run_in_pty
from reapi import Client, digest
from serverutil import start_granary
from test_auth_serve import create_token
from tlsserver import PkiFiles

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.progress import human_bytes
from granary.status_cli import EXIT_NOT_GRANARY, EXIT_UNAUTHORIZED, EXIT_UNREACHABLE, metrics_url

CACHE = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"*": {cas: main, action_cache: main}}
"""
AUTH = """
auth:
  htpasswd: htpasswd
  tokens: {}
  rules: [{identities: [alice, ci], permissions: [cache-read, cache-write, ac-write]}]
"""


def status(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "granary", "status", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def line(out: str, label: str) -> str:
    """The value of the `label:` line of a --once snapshot."""
    m = re.search(rf"^{re.escape(label)}:\s+(.*)$", out, re.MULTILINE)
    assert m, f"no {label!r} line in:\n{out}"
    return m.group(1)


def get_result(client: Client, action: re_pb2.Digest) -> re_pb2.ActionResult | None:
    try:
        return client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=action), timeout=30)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
        return None


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_once_prints_what_the_server_counted(tmp_path):
    with start_granary(tmp_path, CACHE) as server:
        base = http_url(server)
        client = Client(server.address)
        blob = b"status blob " * 83 + b"1234"  # 1000 bytes
        (stored,) = client.upload(blob)
        misses = [digest(f"action {i}".encode()) for i in range(3)]
        assert all(get_result(client, a) is None for a in misses)
        client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(
            action_digest=misses[0], action_result=re_pb2.ActionResult(stdout_digest=stored)), timeout=30)
        assert get_result(client, misses[0]) is not None
        client.close()
        m = settled(base, ("granary_grpc_requests_total", "granary_action_cache_hits_total",
                           "granary_action_cache_misses_total", "granary_cas_stored_bytes"))
        # 1 BatchUpdateBlobs + 4 GetActionResult (3 misses, 1 hit) + 1 UpdateActionResult
        assert m.total("granary_grpc_requests_total") == 6

        done = status("--once", "--url", base, "--interval", "0")
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert out.startswith(f"granary status: {base}/metrics, one scrape, no rates\n"), out
        assert line(out, "requests") == "-/s  total 6"
        assert line(out, "errors") == "-/s  total 0"  # NOT_FOUND is an answer, not an error
        assert line(out, "AC hit ratio") == "- recent, 25.0% total (1 hits, 3 misses)"
        assert line(out, "stored") == f"{m.total('granary_cas_stored_blobs'):.0f} blobs, 1000 B"
        assert m.total("granary_cas_stored_blobs") == 1
        sent = m.total("granary_grpc_sent_bytes_total")
        assert sent > 0 and line(out, "bytes out") == f"-/s  total {human_bytes(sent)}"
        assert line(out, "queue") == "0 queued, 0 executing, -/s done (total 0)"
        assert line(out, "workers") == "0 connected, 0 busy; slots 0/0 busy"
        assert line(out, "uploads") == "0 in progress"
        methods = out.split("busiest methods:\n", 1)[1].splitlines()
        assert re.fullmatch(r"\s+ActionCache/GetActionResult\s+-\s+total 4", methods[0]), methods
        assert {re.split(r"\s+", m.strip())[0] for m in methods[1:]} == {
            "ContentAddressableStorage/BatchUpdateBlobs", "ActionCache/UpdateActionResult"}

        # two scrapes with nothing in between: every rate is zero, the totals the same
        done = status("--once", "--url", base, "--interval", "0.5", "--top", "1")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0].startswith(f"granary status: {base}/metrics, rates over ")
        assert line(done.stdout, "requests") == "0.0/s  total 6"
        assert line(done.stdout, "bytes in").startswith("0 B/s  total ")
        assert line(done.stdout, "AC hit ratio") == "- recent, 25.0% total (1 hits, 3 misses)"
        assert len(done.stdout.split("busiest methods:\n", 1)[1].splitlines()) == 1

        # the gRPC port answers in HTTP/2 frames
        done = status("--once", "--url", server.address, "--interval", "0")
        assert done.returncode == EXIT_NOT_GRANARY
        assert done.stderr == (f"granary status: http://{server.address}/metrics: the answer is not HTTP/1.1"
                               " (BadStatusLine): not Granary's HTTP port (by default the gRPC port + 1)\n")


def test_rates_move_while_requests_arrive(tmp_path):
    with start_granary(tmp_path, CACHE) as server:
        base = http_url(server)
        stop = threading.Event()

        def traffic() -> None:
            client = Client(server.address)
            i = 0
            while not stop.is_set():
                get_result(client, digest(f"busy {i}".encode()))
                i += 1
            client.close()

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            done = status("--once", "--url", base, "--interval", "2.5")
        finally:
            stop.set()
            worker.join()
        assert done.returncode == 0, done.stderr
        rate = float(line(done.stdout, "requests").split("/s")[0])
        assert rate > 0, done.stdout
        assert line(done.stdout, "AC hit ratio").startswith("0.0% recent, 0.0% total"), done.stdout
        assert re.search(r"^\s+ActionCache/GetActionResult\s+\d+\.\d/s\s+total \d+$", done.stdout, re.MULTILINE)
        assert not line(done.stdout, "bytes in").startswith("0 B/s")


def test_protected_metrics_need_credentials(tmp_path):
    data = tmp_path / "granary-data"
    data.mkdir()
    (data / "htpasswd").write_text(f"alice:{bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    token = create_token(data, "ci", "cache-read")
    with start_granary(tmp_path, CACHE + AUTH) as server:
        base = http_url(server)
        done = status("--once", "--url", base, "--interval", "0")
        assert done.returncode == EXIT_UNAUTHORIZED
        assert done.stdout == ""
        assert done.stderr == (f"granary status: {base}/metrics: HTTP 401 Unauthorized:"
                               " no credentials given (--user or --token-file)\n")
        done = status("--once", "--url", base, "--interval", "0", "--user", "alice", env={"GRANARY_PASSWORD": "nope"})
        assert done.returncode == EXIT_UNAUTHORIZED
        assert done.stderr == f"granary status: {base}/metrics: HTTP 401 Unauthorized: the credentials were refused\n"
        done = status("--once", "--url", base, "--interval", "0", "--user", "alice",
                      env={"GRANARY_PASSWORD": "secret"})
        assert done.returncode == 0, done.stderr
        assert line(done.stdout, "errors") == "-/s  total 0"
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        done = status("--once", "--url", base, "--interval", "0", "--token-file", str(token_file))
        assert done.returncode == 0, done.stderr
        assert "requests:" in done.stdout
        token_file.write_text("not-a-token\n")
        done = status("--once", "--url", base, "--interval", "0", "--token-file", str(token_file))
        assert done.returncode == EXIT_UNAUTHORIZED, done.stderr
        # a missing password is a usage error, said before anything is sent
        env = {k: v for k, v in os.environ.items() if k != "GRANARY_PASSWORD"}
        done = subprocess.run([sys.executable, "-m", "granary", "status", "--once", "--url", base, "--user", "alice"],
                              capture_output=True, text=True, timeout=60, check=False, env=env,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 2
        assert done.stderr == "granary: configuration error: --user alice: set the password in $GRANARY_PASSWORD\n"


def test_https_port_with_the_config_derived_url_and_a_ca(tmp_path):
    pki = PkiFiles.write(tmp_path / "pki")
    data = tmp_path / "granary-data"
    data.mkdir()
    (data / "htpasswd").write_text(f"alice:{bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    port = free_port()
    config = (CACHE + AUTH + f"server: {{tls: {{cert: {pki.server_cert}, key: {pki.server_key}}}}}\n"
              f"http: {{listen: '127.0.0.1:{port}'}}\n")
    with start_granary(tmp_path, config) as server:
        cfg = tmp_path / "granary.yaml"
        assert metrics_url(None, cfg) == f"https://127.0.0.1:{port}/metrics"
        assert http_url(server) == f"https://127.0.0.1:{port}"  # what `granary serve` announced
        secret = {"GRANARY_PASSWORD": "secret"}
        done = status("-c", str(cfg), "--once", "--interval", "0", "--user", "alice", env=secret)
        assert done.returncode == EXIT_UNREACHABLE
        assert done.stderr.startswith(f"granary status: cannot reach https://127.0.0.1:{port}/metrics: TLS:"
                                      " certificate verify failed: "), done.stderr
        assert done.stderr.endswith("(pass --ca with the CA that signed it)\n") and done.stderr.count("\n") == 1
        done = status("-c", str(cfg), "--once", "--interval", "0", "--user", "alice", "--ca", str(pki.ca), env=secret)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"granary status: https://127.0.0.1:{port}/metrics, one scrape")
        assert line(done.stdout, "uploads") == "0 in progress"
        # with the other CA the server's certificate does not check out
        done = status("--url", f"https://127.0.0.1:{port}", "--once", "--interval", "0", "--user", "alice",
                      "--ca", str(pki.other_ca), env=secret)
        assert done.returncode == EXIT_UNREACHABLE and "certificate" in done.stderr


def test_url_from_the_config_is_where_serve_listens(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(CACHE + "server: {listen: '0.0.0.0:18980'}\n")
    assert metrics_url(None, cfg) == "http://127.0.0.1:18981/metrics"  # auto: gRPC port + 1, asked on loopback
    cfg.write_text(CACHE + "http: {listen: '[::1]:9100'}\n")
    assert metrics_url(None, cfg) == "http://[::1]:9100/metrics"
    assert metrics_url("cache.example:9100", None) == "http://cache.example:9100/metrics"
    assert metrics_url("https://cache.example:9100/metrics", None) == "https://cache.example:9100/metrics"
    cfg.write_text(CACHE + "http: {enabled: false}\n")
    done = status("-c", str(cfg), "--once")
    assert done.returncode == 2
    assert done.stderr == (f"granary: configuration error: http.enabled is false in {cfg}:"
                           " the server has no HTTP port and keeps no metrics\n")
    cfg.write_text(CACHE + "server: {listen: '127.0.0.1:0'}\n")
    done = status("--config", str(cfg), "--once")
    assert done.returncode == 2 and "pass --url" in done.stderr


def test_unreachable_and_not_granary(tmp_path):
    port = free_port()
    done = status("--once", "--url", f"127.0.0.1:{port}")
    assert done.returncode == EXIT_UNREACHABLE
    assert done.stderr == f"granary status: cannot reach http://127.0.0.1:{port}/metrics: Connection refused\n"

    (tmp_path / "metrics").write_text("# TYPE something_else counter\nsomething_else_total 3\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        done = status("--once", "--url", url, "--interval", "0")
        assert done.returncode == EXIT_NOT_GRANARY
        assert done.stderr == (f"granary status: {url}/metrics: the answer has no granary_ metrics:"
                               " not a Granary server's /metrics\n")
        done = status("--once", "--url", f"{url}/elsewhere", "--interval", "0")
        assert done.returncode == EXIT_NOT_GRANARY
        assert done.stderr == (f"granary status: {url}/elsewhere/metrics: HTTP 404 File not found:"
                               " not a Granary server's /metrics\n")
    finally:
        other.shutdown()
        other.server_close()


def test_live_display_redraws_until_sigint(tmp_path):
    with start_granary(tmp_path, CACHE) as server:
        base = http_url(server)
        client = Client(server.address)
        get_result(client, digest(b"live"))
        client.close()
        scrape(base)
        frames = re.compile(rb"granary status .*?every 0\.3 s; Ctrl-C quits")
        pid, out, fd = run_in_pty(["-m", "granary", "status", "--url", base, "--interval", "0.3"],
                                  lambda out: len(frames.findall(out)) >= 4)
        os.kill(pid, signal.SIGINT)
        code, out = finish(pid, fd, out)
    text = out.decode(errors="replace")
    assert code == 0, text
    assert "Traceback" not in text
    assert "\x1b[?25l" in text and text.rstrip().endswith("\x1b[?25h")  # the cursor hidden, then given back
    assert "\x1b[1A" in text  # each redraw moves back up over the last frame
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "AC hit ratio" in plain and "busiest methods" in plain
    assert "ActionCache/GetActionResult" in plain
    assert re.search(r"requests\s+\d+\.\d/s\s+total \d+", plain)  # rates once there were two scrapes


def test_not_a_terminal_means_once(tmp_path):
    """Without a terminal (a pipe here) the command prints one snapshot and exits, --once or not."""
    with start_granary(tmp_path, CACHE) as server:
        done = status("--url", http_url(server), "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("granary status:") == 1 and "\x1b[" not in done.stdout


@pytest.fixture(autouse=True)
def _no_password_from_the_caller(monkeypatch):
    monkeypatch.delenv("GRANARY_PASSWORD", raising=False)

