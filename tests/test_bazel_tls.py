"""Real Bazel 4.2.3 against a real `granary serve` over TLS, with credentials (issue 8).

Debian's Bazel cannot speak grpcs:// by itself (its netty lacks JDK ALPN); with netty's
OpenSSL backend (libnetty-tcnative-jni, see bazelutil.tls_startup_flags) it can.

One TLS server with htpasswd users and personal access tokens, remote execution on:
  (f) no credentials: the build (remote execution) fails with UNAUTHENTICATED, nothing stored;
  (a) HTTP Basic (`--remote_header=Authorization=Basic ...`): a build that caches, then after
      `bazel clean` >= 95% remote cache hits with byte-identical outputs;
  (b, d) a bearer token from `granary token create`: every action executes remotely
      (`--remote_executor=grpcs://...`, `N remote` in the summary);
  (e) a read-only identity (cache-read only) gets hits, runs what changed locally, and
      uploads nothing: the action cache and the CAS do not grow, the build succeeds.
One mTLS server (client CA, identity from the certificate's common name):
  (c) `--tls_client_certificate/--tls_client_key`: a build that caches, then hits;
      without a client certificate the handshake is refused and the build stops.

The Bazel runs are done in module-scoped fixtures (each costs 20-40 s here); the tests
check one property each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bazelutil import (
    BazelResult,
    bazel_version,
    copy_workspace,
    have_bazel,
    tcnative_dir,
    tls_flags,
    tls_startup_flags,
)
from google.longrunning import operations_pb2, operations_pb2_grpc
from serverutil import GranaryProcess, start_granary
from tlsserver import (
    PkiFiles,
    StoreCounts,
    basic,
    create_token,
    ensure_tcnative,
    server_config,
    store_counts,
    tls_channel,
    write_htpasswd,
)

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.slow,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.timeout(1800),
]

WORKSPACE = "bazel_basic"
TARGETS = ("//gen/...",)
WRITER = ("ci", "ci-password")  # cache-read, cache-write, ac-write, execute
READER = ("reader", "reader-password")  # cache-read only
EVERYTHING = ["cache-read", "cache-write", "ac-write", "execute"]
LOCAL_KINDS = ("linux-sandbox", "processwrapper-sandbox", "local", "worker", "sandbox", "standalone")
REMOTE_EXECUTION = [
    "--spawn_strategy=remote",
    "--genrule_strategy=remote",
    "--remote_local_fallback=false",
    "--noremote_accept_cached",  # the cache already holds these results: execute anyway
]


@pytest.fixture(scope="module")
def startup(tmp_path_factory) -> list[str]:
    """Bazel startup options with a private copy of netty's OpenSSL JNI library."""
    ensure_tcnative()
    lib = tcnative_dir(tmp_path_factory.mktemp("tcnative"))
    assert lib is not None
    return tls_startup_flags(lib)


@dataclass
class TlsSession:
    base: Path
    pki: PkiFiles
    server: GranaryProcess
    config: Path
    startup: list[str]
    unauthenticated: BazelResult
    after_unauthenticated: StoreCounts
    cold: BazelResult
    cold_outputs: dict[str, str]
    warm: BazelResult
    warm_outputs: dict[str, str]
    after_writer: StoreCounts

    @property
    def url(self) -> str:
        return f"grpcs://{self.server.address}"

    def log(self) -> str:
        try:
            return self.server.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "<no server log>"

    def flags(self, *headers: tuple[str, str], executor: bool = False) -> list[str]:
        remote = f"--remote_executor={self.url}" if executor else f"--remote_cache={self.url}"
        return [remote, "--remote_timeout=60", *tls_flags(self.pki.ca, headers=dict(headers))]


@pytest.fixture(scope="module")
def tls(tmp_path_factory, startup) -> Iterator[TlsSession]:
    base: Path = tmp_path_factory.mktemp("bazel-tls")
    print(f"\n{bazel_version()}")
    pki = PkiFiles.write(base / "pki")
    htpasswd = write_htpasswd(base / "htpasswd", dict([WRITER, READER]))
    auth = {
        "htpasswd": str(htpasswd),
        "tokens": {},
        "rules": [
            {"instance": "", "identities": [WRITER[0], "builder"], "permissions": EVERYTHING},
            {"instance": "", "identities": [READER[0]], "permissions": ["cache-read"]},
        ],
    }
    config_text = server_config(pki, auth, execution=True)
    server = start_granary(base / "server", config_text)
    try:
        ws = copy_workspace(WORKSPACE, base / "writer", jobs=2, startup=startup)
        url = f"grpcs://{server.address}"

        def flags(*headers: tuple[str, str]) -> list[str]:
            return [f"--remote_cache={url}", "--remote_timeout=60", *tls_flags(pki.ca, headers=dict(headers))]

        # (f) TLS but no credentials at all. With only --remote_cache Bazel 4.2.3 shrugs off
        # cache errors (warnings) and builds locally; asking it to execute remotely makes
        # the refusal fail the build.
        unauthenticated = ws.build(
            *TARGETS, f"--remote_executor={url}", "--remote_timeout=60", *tls_flags(pki.ca), *REMOTE_EXECUTION,
            output_base=base / "ob-anonymous", check=False,
        )
        after_unauthenticated = store_counts(server.data_dir)
        # (a) Basic: fill the cache, forget the outputs, get them back
        writer = ("Authorization", basic(*WRITER))
        cold = ws.build(*TARGETS, *flags(writer), check=False)
        cold_outputs = ws.output_hashes() if cold.ok else {}
        ws.clean()
        warm = ws.build(*TARGETS, *flags(writer), check=False)
        warm_outputs = ws.output_hashes() if warm.ok else {}
        for name, run in (("no credentials", unauthenticated), ("basic cold", cold), ("basic after clean", warm)):
            print(f"{name}: rc={run.returncode} summary={run.summary}")
        session = TlsSession(base, pki, server, base / "server" / "granary.yaml", startup, unauthenticated,
                             after_unauthenticated, cold, cold_outputs, warm, warm_outputs,
                             store_counts(server.data_dir))
        yield session
    finally:
        server.stop()


def test_no_credentials_fail_with_unauthenticated(tls):
    r = tls.unauthenticated
    assert not r.ok, r.describe()
    assert "UNAUTHENTICATED" in r.output, r.describe()
    assert tls.after_unauthenticated == StoreCounts(0, 0)


def test_basic_credentials_fill_the_cache(tls):
    cold = tls.cold
    assert cold.ok, f"{cold.describe()}\n--- server log ---\n{tls.log()}"
    assert cold.cache_hits == 0 and cold.non_internal >= 5, cold.describe()
    assert "Remote Cache" not in cold.output, cold.describe()  # no failed reads or writes
    assert tls.after_writer.action_results >= cold.non_internal, (tls.after_writer, cold.summary)


def test_basic_credentials_hit_after_clean_with_identical_outputs(tls):
    warm = tls.warm
    assert warm.ok, warm.describe()
    assert warm.hit_rate >= 0.95, warm.describe()
    assert tls.cold_outputs and tls.warm_outputs == tls.cold_outputs


def test_bearer_token_executes_remotely(tls):
    token = create_token(tls.config, tls.server.data_dir, "builder", EVERYTHING)
    ws = copy_workspace(WORKSPACE, tls.base / "builder", jobs=2, startup=tls.startup)
    r = ws.build(*TARGETS, *tls.flags(("Authorization", f"Bearer {token}"), executor=True), *REMOTE_EXECUTION,
                 check=False)
    print(f"bearer, remote execution: rc={r.returncode} summary={r.summary}")
    assert r.ok, f"{r.describe()}\n--- server log ---\n{tls.log()}"
    ran_here = {k: r.count(k) for k in LOCAL_KINDS if r.count(k)}
    assert not ran_here, f"processes ran locally: {ran_here}\n{r.describe()}"
    assert r.count("remote") == tls.cold.non_internal, (r.summary, tls.cold.summary)
    assert ws.output_hashes() == tls.cold_outputs
    # each remotely executed action is an operation owned by the token's identity
    # (another caller without admin sees none of them)
    def completed(who: str, authorization: str) -> list[str]:
        with tls_channel(tls.server.address, tls.pki) as channel:
            response = operations_pb2_grpc.OperationsStub(channel).ListOperations(
                operations_pb2.ListOperationsRequest(filter=f"identity = {who} & stage = COMPLETED", page_size=1000),
                metadata=[("authorization", authorization)], timeout=30,
            )
        return [op.name for op in response.operations]

    assert len(completed("builder", f"Bearer {token}")) == r.count("remote")
    assert completed("builder", basic(*WRITER)) == []


def test_read_only_identity_gets_hits_and_uploads_nothing(tls):
    ws = copy_workspace(WORKSPACE, tls.base / "reader", jobs=2, startup=tls.startup)
    # one changed genrule (and what depends on it) runs locally; the rest can hit
    build_file = ws.root / "gen" / "BUILD"
    build_file.write_text(build_file.read_text().replace("hello from granary", "hello from a reader"))
    before = store_counts(tls.server.data_dir)
    r = ws.build(*TARGETS, *tls.flags(("Authorization", basic(*READER))), check=False)
    print(f"read-only: rc={r.returncode} summary={r.summary}")
    assert r.ok, r.describe()  # refused uploads are warnings, not failures
    assert "Writing to Remote Cache" in r.output, r.describe()  # refused, not silently dropped
    assert r.cache_hits >= 2, r.describe()
    local = r.non_internal - r.cache_hits
    assert local >= 3, r.describe()  # hello, multi, chained, chained_again changed
    assert store_counts(tls.server.data_dir) == before
    # what the reader built is nowhere in the CAS
    hello = (ws.root / "bazel-bin" / "gen" / "hello.txt").read_bytes()
    assert hello == b"hello from a reader\n"
    digest = re_pb2.Digest(hash=hashlib.sha256(hello).hexdigest(), size_bytes=len(hello))
    with tls_channel(tls.server.address, tls.pki) as channel:
        missing = re_grpc.ContentAddressableStorageStub(channel).FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[digest]),
            metadata=[("authorization", basic(*WRITER))],
            timeout=30,
        ).missing_blob_digests
    assert list(missing) == [digest]


# ---- mTLS -----------------------------------------------------------------------------------


@dataclass
class MtlsSession:
    anonymous: BazelResult
    after_anonymous: StoreCounts
    cold: BazelResult
    after_cold: StoreCounts
    warm: BazelResult
    outputs: tuple[dict[str, str], dict[str, str]]


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, startup) -> Iterator[MtlsSession]:
    base: Path = tmp_path_factory.mktemp("bazel-mtls")
    pki = PkiFiles.write(base / "pki")
    auth = {
        "mtls": {"identity": "common_name"},
        "rules": [{"instance": "", "identities": ["alice"], "permissions": ["cache-read", "cache-write", "ac-write"]}],
    }
    server = start_granary(base / "server", server_config(pki, auth, mtls=True))
    try:
        ws = copy_workspace(WORKSPACE, base / "alice", jobs=2, startup=startup)
        flags = [f"--remote_cache=grpcs://{server.address}", "--remote_timeout=60",
                 *tls_flags(pki.ca, pki.client_cert, pki.client_key)]
        # no client certificate: the server refuses the TLS handshake; Bazel cannot even ask
        # for the capabilities and stops
        anonymous = ws.build(*TARGETS, *flags[:3], output_base=base / "ob-anonymous", check=False)
        after_anonymous = store_counts(server.data_dir)
        cold = ws.build(*TARGETS, *flags, check=False)
        cold_outputs = ws.output_hashes() if cold.ok else {}
        after_cold = store_counts(server.data_dir)
        ws.clean()
        warm = ws.build(*TARGETS, *flags, check=False)
        warm_outputs = ws.output_hashes() if warm.ok else {}
        for name, run in (("mtls without certificate", anonymous), ("mtls cold", cold), ("mtls after clean", warm)):
            print(f"{name}: rc={run.returncode} summary={run.summary}")
        yield MtlsSession(anonymous, after_anonymous, cold, after_cold, warm, (cold_outputs, warm_outputs))
    finally:
        server.stop()


def test_mtls_client_certificate_fills_the_cache(mtls):
    cold = mtls.cold
    assert cold.ok, cold.describe()
    assert cold.cache_hits == 0 and cold.non_internal >= 5, cold.describe()
    assert "Remote Cache" not in cold.output, cold.describe()
    assert mtls.after_cold.action_results >= cold.non_internal, (mtls.after_cold, cold.summary)


def test_mtls_client_certificate_hits_after_clean(mtls):
    warm = mtls.warm
    assert warm.ok, warm.describe()
    assert warm.hit_rate >= 0.95, warm.describe()
    cold_outputs, warm_outputs = mtls.outputs
    assert cold_outputs and warm_outputs == cold_outputs


def test_mtls_without_client_certificate_is_refused(mtls):
    r = mtls.anonymous
    assert not r.ok, r.describe()
    assert "Failed to query remote execution capabilities" in r.output, r.describe()
    assert mtls.after_anonymous == StoreCounts(0, 0)
