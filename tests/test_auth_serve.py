"""A real `granary serve` with TLS, htpasswd, access tokens and per-instance permissions,
over real sockets: each credential, each refusal, operations that belong to their caller,
local workers that authenticate themselves, and a remote `granary worker` with a token."""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import grpc
import pytest
from authutil import Pki
from google.longrunning import operations_pb2, operations_pb2_grpc
from obsutil import http_url
from reapi import digest
from rwapi import ExecClient, final
from serverutil import GranaryProcess, start_granary

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2_grpc
from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from granary.worker.connect import Credentials, open_channel

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "reader": "reader-pw", "mallory": "mallory-pw", "boss": "boss-pw",
             "farmer": "farmer-pw"}
RULES = """
  rules:
    - {identities: [alice, bob, ci], permissions: [cache-read, cache-write, ac-write, execute]}
    - {identities: [reader], permissions: [cache-read]}
    - {identities: [mallory], permissions: [cache-read, cache-write, execute]}
    - {identities: [boss], permissions: [admin]}
    - {identities: [farm, farmer], permissions: [worker, cache-read, cache-write]}
"""
UNAUTHENTICATED, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


def basic(user: str) -> tuple[str, str]:
    return ("authorization", "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode())


def granary(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "granary", *args], check=False, capture_output=True, text=True, timeout=120,
                          env=env)


def create_token(data_dir: Path, name: str, *scopes: str) -> str:
    flags = [f"--scope={s}" for s in scopes]
    done = granary("token", "create", "--data-dir", str(data_dir), "--name", name, *flags, "--expires", "1d")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[0]


class Server:
    def __init__(self, proc: GranaryProcess, ca: Path, tokens: dict[str, str]):
        self.proc, self.ca, self.tokens = proc, ca, tokens

    def channel(self, header: tuple[str, str] | None = None, **tls) -> grpc.Channel:
        return open_channel(f"grpcs://{self.proc.address}", Credentials(tls_ca=self.ca, header=header, **tls), [])

    def client(self, header: tuple[str, str] | None, instance: str = "") -> ExecClient:
        c = ExecClient(self.proc.address, instance)
        c.channel.close()
        c.channel = self.channel(header)
        c.cas = re_grpc.ContentAddressableStorageStub(c.channel)
        c.ac = re_grpc.ActionCacheStub(c.channel)
        c.caps = re_grpc.CapabilitiesStub(c.channel)
        c.bs = bytestream_pb2_grpc.ByteStreamStub(c.channel)
        c.exec = re_grpc.ExecutionStub(c.channel)
        c.ops = operations_pb2_grpc.OperationsStub(c.channel)
        return c


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki):
    """TLS + htpasswd + tokens, execution with one local worker."""
    tmp = tmp_path_factory.mktemp("auth-serve")
    data = tmp / "granary-data"
    data.mkdir()
    pki.server.write(data, "server")
    (data / "ca.crt").write_bytes(pki.ca.cert_pem)
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in PASSWORDS.items()]
    (data / "htpasswd").write_text("\n".join(lines) + "\n")
    tokens = {
        "ci": create_token(data, "ci", "cache-read", "cache-write", "ac-write", "execute"),
        "farm": create_token(data, "farm", "worker", "cache-read", "cache-write"),
    }
    config = f"""
server:
  tls: {{cert: server.crt, key: server.key}}
storage: {{main: {{type: disk, path: cas}}}}
action_caches: {{main: {{type: disk, path: ac}}}}
instances: {{"*": {{cas: main, action_cache: main}}}}
execution: {{local_workers: 1, known_platforms: [], platform_grace: 60s, bot_long_poll: 1}}
auth:
  htpasswd: htpasswd
  tokens: {{header: x-granary-token}}
{RULES}
"""
    proc = start_granary(tmp, config, "--log-level", "info")
    yield Server(proc, data / "ca.crt", tokens)
    proc.stop()


def find_missing(channel: grpc.Channel, instance: str = "") -> None:
    stub = re_grpc.ContentAddressableStorageStub(channel)
    stub.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(instance_name=instance, blob_digests=[digest(b"x")]),
                          timeout=30)


def code_of(fn, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kwargs)
    return e.value.code()


# ---- credentials ----------------------------------------------------------------------------


def test_each_credential_is_accepted(server):
    find_missing(server.channel(basic("alice")))
    find_missing(server.channel(("authorization", f"Bearer {server.tokens['ci']}")))
    find_missing(server.channel(("x-granary-token", server.tokens["ci"])))
    # GetCapabilities is public: Bazel asks before anything else
    re_grpc.CapabilitiesStub(server.channel()).GetCapabilities(re_pb2.GetCapabilitiesRequest(), timeout=30)


@pytest.mark.parametrize("header", [
    None,
    ("authorization", "Bearer garbage"),
    ("authorization", "Bearer gnr_0000000000000000000000000000000000000000"),
    ("authorization", "Bearer gnrlw_guessing-the-local-worker-secret"),
    ("authorization", "Basic !!!not-base64"),
    ("authorization", "Basic " + base64.b64encode(b"alice:wrong").decode()),
    ("authorization", "Digest whatever"),
    ("x-granary-token", "nonsense"),
])
def test_missing_and_garbage_credentials_are_unauthenticated(server, header):
    assert code_of(find_missing, server.channel(header)) == UNAUTHENTICATED


def test_a_plain_client_cannot_talk_to_the_tls_port(server):
    channel = grpc.insecure_channel(server.proc.address)
    assert code_of(find_missing, channel) == grpc.StatusCode.UNAVAILABLE


# ---- permissions ----------------------------------------------------------------------------


def test_read_only_identity_reads_but_cannot_upload_or_write_results(server):
    writer, reader = server.client(basic("alice")), server.client(basic("reader"))
    [d] = writer.upload(b"shared bytes")
    assert reader.missing([d]) == []
    assert reader.bs_read(d) == b"shared bytes"
    assert code_of(reader.upload, b"forged") == DENIED
    assert code_of(reader.bs_write, b"forged via bytestream") == DENIED
    request = re_pb2.UpdateActionResultRequest(action_digest=digest(b"some action"),
                                               action_result=re_pb2.ActionResult(exit_code=0))
    assert code_of(reader.ac.UpdateActionResult, request, timeout=30) == DENIED
    writer.ac.UpdateActionResult(request, timeout=30)  # alice has ac-write


def test_an_identity_without_worker_cannot_open_a_bot_session(server):
    """The attack: a client registers as a worker to receive other people's actions."""
    session = bots_pb2.BotSession(bot_id="evil-bot", status=bots_pb2.BotStatus.OK)
    request = bots_pb2.CreateBotSessionRequest(parent="", bot_session=session)
    for header, code in [(basic("mallory"), DENIED), (None, UNAUTHENTICATED),
                         (("authorization", f"Bearer {server.tokens['ci']}"), DENIED)]:
        stub = bots_pb2_grpc.BotsStub(server.channel(header))
        assert code_of(stub.CreateBotSession, request, timeout=30) == code


def test_an_identity_without_execute_cannot_execute(server):
    reader = server.client(basic("reader"))
    d = digest(b"an action nobody uploaded")
    assert code_of(final, reader.execute(d)) == DENIED
    assert code_of(final, server.client(None).execute(d)) == UNAUTHENTICATED


# ---- execution: local workers, ownership, remote workers ----------------------------------------


def test_local_workers_execute_when_auth_and_tls_are_on(server):
    alice = server.client(basic("alice"))
    d, _ = alice.action(["sh", "-c", "echo secured > out"])
    response = final(alice.execute(d, timeout=120))
    assert response.status.code == 0 and response.result.exit_code == 0, response
    assert response.result.execution_metadata.worker.startswith("local-")
    [out] = response.result.output_files
    assert alice.bs_read(out.digest) == b"secured\n"
    log = server.proc.log.read_text()
    assert "by 'alice' (basic)" in log  # the identity is in the operation's log line
    secret = (next(server.proc.data_dir.glob("local-worker-*.token"))).read_text().strip()
    assert secret not in log
    assert oct(next(server.proc.data_dir.glob("local-worker-*.token")).stat().st_mode & 0o777) == "0o600"


def test_operations_belong_to_their_caller(server):
    alice, bob, boss = server.client(basic("alice")), server.client(basic("bob")), server.client(basic("boss"))
    ops = alice.ops
    d, _ = alice.action(["sh", "-c", "echo mine > out"])
    op_name = final_op_name(alice, d)
    get = operations_pb2.GetOperationRequest(name=op_name)
    assert ops.GetOperation(get, timeout=30).done
    assert code_of(bob.ops.GetOperation, get, timeout=30) == DENIED
    assert code_of(bob.ops.CancelOperation, operations_pb2.CancelOperationRequest(name=op_name), timeout=30) == DENIED
    assert code_of(bob.ops.DeleteOperation, operations_pb2.DeleteOperationRequest(name=op_name), timeout=30) == DENIED
    assert code_of(lambda: list(bob.wait(op_name))) == DENIED
    assert boss.ops.GetOperation(get, timeout=30).name == op_name
    assert list(alice.wait(op_name))[-1].done

    def names(client: ExecClient, flt: str) -> set[str]:
        resp = client.ops.ListOperations(operations_pb2.ListOperationsRequest(name="", filter=flt), timeout=30)
        return {o.name for o in resp.operations}

    d2, _ = bob.action(["sh", "-c", "echo bob > out"])
    bob_op = final_op_name(bob, d2)
    assert op_name in names(alice, "stage = COMPLETED")
    assert bob_op not in names(alice, "stage = COMPLETED")
    assert names(alice, "identity = bob & stage = COMPLETED") == set()
    assert {op_name, bob_op} <= names(boss, "stage = COMPLETED")
    by_bob = names(boss, "identity = bob & stage = COMPLETED")
    assert bob_op in by_bob and op_name not in by_bob
    boss.ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=bob_op), timeout=30)
    alice.ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=op_name), timeout=30)


def final_op_name(client: ExecClient, d: re_pb2.Digest) -> str:
    ops = list(client.execute(d, timeout=120))
    assert ops[-1].done
    return ops[-1].name


@pytest.mark.parametrize("style", ["bearer", "token-header", "basic"])
def test_a_remote_worker_with_a_token_and_tls_executes(server, tmp_path, style):
    secret = tmp_path / "secret"
    if style == "basic":
        secret.write_text(f"farmer:{PASSWORDS['farmer']}\n")
        credential = ["--basic-auth-file", str(secret)]
    else:
        secret.write_text(server.tokens["farm"] + "\n")
        credential = ["--token-file", str(secret)]
        if style == "token-header":
            credential += ["--auth-header", "x-granary-token"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", f"grpcs://{server.proc.address}",
         "--tls-ca", str(server.ca), *credential, "--property", "Pool=remote",
         "--name", "farm-worker", "--cache-dir", str(tmp_path / "cache"), "--concurrency", "1",
         "--sandbox", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert worker.stdout is not None
        assert "serving" in worker.stdout.readline()
        alice = server.client(basic("alice"))
        d, _ = alice.action(["sh", "-c", "echo far away > out"], platform=[("Pool", "remote")])
        response = final(alice.execute(d, timeout=120))
        assert response.result.exit_code == 0, response
        assert response.result.execution_metadata.worker.startswith("farm-worker")
    finally:
        worker.terminate()
        worker.wait(60)


def test_a_worker_with_a_readers_token_is_refused(server, tmp_path):
    token_file = tmp_path / "ci.token"
    token_file.write_text(server.tokens["ci"])
    env = dict(os.environ)
    env["CI_TOKEN"] = server.tokens["ci"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", f"grpcs://{server.proc.address}",
         "--tls-ca", str(server.ca), "--token-env", "CI_TOKEN", "--name", "sneaky", "--log-level", "warning",
         "--cache-dir", str(tmp_path / "cache"), "--concurrency", "1", "--sandbox", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        assert worker.stdout is not None
        lines = [worker.stdout.readline() for _ in range(2)]
        assert any("PERMISSION_DENIED" in line for line in lines), lines
    finally:
        worker.terminate()
        worker.wait(60)


# ---- the remote storage backend against a TLS + token Granary -------------------------------------


def test_remote_backend_speaks_tls_and_tokens(server, tmp_path):
    token_file = tmp_path / "ci.token"
    token_file.write_text(server.tokens["ci"] + "\n")
    config = f"""
storage:
  upstream: {{type: remote, address: "grpcs://{server.proc.address}", tls_ca_cert: "{server.ca}",
             auth_token_file: "{token_file}"}}
action_caches:
  upstream: {{type: remote, address: "grpcs://{server.proc.address}", tls_ca_cert: "{server.ca}",
             auth_token_file: "{token_file}", auth_header: x-granary-token}}
instances: {{"*": {{cas: upstream, action_cache: upstream}}}}
"""
    with start_granary(tmp_path / "b", config) as b:
        front = ExecClient(b.address)
        [d] = front.upload(b"through the front door")
        alice = server.client(basic("alice"))
        assert alice.bs_read(d) == b"through the front door"
        result = re_pb2.ActionResult(exit_code=7)
        ad = digest(b"an action keyed through B")
        front.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=ad, action_result=result),
                                    timeout=30)
        got = alice.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=ad), timeout=30)
        assert got.exit_code == 7


# ---- mTLS ---------------------------------------------------------------------------------------


def test_mtls_identities(tmp_path, pki):
    data = tmp_path / "granary-data"
    data.mkdir(parents=True)
    pki.server.write(data, "server")
    (data / "ca.crt").write_bytes(pki.ca.cert_pem)
    alice_cert, alice_key = pki.alice.write(tmp_path, "alice")
    mallory_cert, mallory_key = pki.mallory.write(tmp_path, "mallory")
    config = """
server: {tls: {cert: server.crt, key: server.key, client_ca: ca.crt}}
instances: {"*": {cas: {type: memory}}}
auth:
  mtls: {}
  rules: [{identities: [alice], permissions: [cache-read]}]
"""
    with start_granary(tmp_path, config) as proc:
        def channel(cert: Path | None, key: Path | None) -> grpc.Channel:
            creds = Credentials(tls_ca=data / "ca.crt", tls_client_cert=cert, tls_client_key=key)
            return open_channel(f"grpcs://{proc.address}", creds, [])

        find_missing(channel(alice_cert, alice_key))
        upload = re_pb2.BatchUpdateBlobsRequest(requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b"y"), data=b"y")])
        stub = re_grpc.ContentAddressableStorageStub(channel(alice_cert, alice_key))
        assert code_of(stub.BatchUpdateBlobs, upload, timeout=30) == DENIED
        assert code_of(find_missing, channel(None, None)) == grpc.StatusCode.UNAVAILABLE  # no certificate
        assert code_of(find_missing, channel(mallory_cert, mallory_key)) == grpc.StatusCode.UNAVAILABLE

        # The HTTP port holds callers to the same: a certificate the client CA signed names them.
        base = http_url(proc)
        assert base.startswith("https://")

        def get(path: str, cert: Path | None, key: Path | None) -> tuple[int, bytes]:
            ctx = ssl.create_default_context(cafile=str(data / "ca.crt"))
            if cert is not None:
                ctx.load_cert_chain(cert, key)
            with urllib.request.urlopen(base + path, context=ctx, timeout=30) as r:
                return r.status, r.read()

        status, body = get("/metrics", alice_cert, alice_key)
        assert status == 200 and b"granary_grpc_requests_total" in body
        assert get("/healthz", alice_cert, alice_key) == (200, b"ok\n")
        for cert, key in ((None, None), (mallory_cert, mallory_key)):
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)) as e:
                get("/metrics", cert, key)
            assert not isinstance(e.value, urllib.error.HTTPError), e.value  # refused in the handshake


# ---- the secure default ---------------------------------------------------------------------------


def test_no_auth_means_loopback_only_unless_the_operator_says_so(tmp_path):
    cmd = ["serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "d"), "--processes", "1"]
    done = granary(*cmd)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--allow-unauthenticated-network-access" in done.stderr
    (tmp_path / "exposed.yaml").write_text("server: {listen: '0.0.0.0:0'}\ninstances: {'*': {cas: {type: memory}}}\n")
    done = granary("serve", "--config", str(tmp_path / "exposed.yaml"), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2 and "server.listen: 0.0.0.0" in done.stderr
    proc = subprocess.Popen([sys.executable, "-m", "granary", *cmd, "--allow-unauthenticated-network-access"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "serving REAPI on grpc://0.0.0.0:" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(60)


def test_config_check_of_auth_settings(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("""
server: {listen: "0.0.0.0:8980", tls: {cert: server.crt, key: server.key, client_ca: ca.crt}}
instances: {"*": {cas: {type: memory}}}
auth:
  htpasswd: htpasswd
  tokens: {header: x-granary-token}
  mtls: {identity: subject_alternative_name, san_prefix: "spiffe://"}
  anonymous: [{instance: public/, permissions: [cache-read]}]
""" + RULES)
    done = granary("config", "check", str(good))
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: {'*': {cas: {type: memory}}}\nauth: {mtls: {}}\n")
    done = granary("config", "check", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip().endswith("auth.mtls: needs server.tls.client_ca (the CA that signs client certificates)")
    assert done.stderr.count("\n") == 1
    bad.write_text("instances: {'*': {cas: {type: memory}}}\nauth: {rules: [{identities: [x], permissions: [root]}]}\n")
    done = granary("config", "check", str(bad))
    assert done.returncode == 2 and "auth.rules[0].permissions[0]" in done.stderr
