"""Real Bazel with Basic and Bearer credentials (--remote_header): a writer fills the cache,
a read-only identity gets hits and uploads nothing.

Plaintext gRPC here, against an in-process server; test_bazel_tls.py runs the same
credentials over TLS and mTLS against a real `granary serve` (Debian's Bazel needs netty's
OpenSSL backend for grpcs://, see bazelutil.tls_startup_flags).
"""

from __future__ import annotations

import base64

import bcrypt
import pytest
from authutil import AuthServer
from bazelutil import copy_workspace, have_bazel

from granary.auth.settings import AuthSettings, build_auth

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.timeout(900),
]
TARGETS = ("//gen/...",)


def test_bazel_with_basic_and_bearer_credentials_and_a_read_only_identity(tmp_path):
    (tmp_path / "htpasswd").write_text(f"ci:{bcrypt.hashpw(b'ci-pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    settings = AuthSettings.model_validate({
        "htpasswd": "htpasswd",
        "tokens": {},
        "rules": [
            {"instance": "", "identities": ["ci"], "permissions": ["cache-read", "cache-write", "ac-write"]},
            {"instance": "", "identities": ["laptop"], "permissions": ["cache-read", "cache-write", "ac-write"]},
        ],
    })
    runtime = build_auth(settings, tmp_path)
    assert runtime.authenticator.tokens is not None
    # laptop's owner could write, but this token is read-only
    _, token = runtime.authenticator.tokens.create("laptop", ["cache-read"], 3600)
    ws = copy_workspace("bazel_basic", tmp_path / "bazel", jobs=2)
    with AuthServer(runtime) as server:
        common = [f"--remote_cache=grpc://{server.address}", "--remote_timeout=60"]
        unauthenticated = ws.build(*TARGETS, *common, output_base=tmp_path / "ob-anon", check=False)
        assert "UNAUTHENTICATED" in unauthenticated.output, unauthenticated.describe()
        assert server.action_results() == 0

        basic = "Basic " + base64.b64encode(b"ci:ci-pw").decode()
        cold = ws.build(*TARGETS, *common, f"--remote_header=Authorization={basic}")
        assert cold.cache_hits == 0 and cold.non_internal >= 3, cold.describe()
        assert "Remote Cache" not in cold.output, cold.describe()
        written = server.action_results()
        assert written >= 3
        assert {i.name for i in server.seen} == {"ci"}

        bearer = f"--remote_header=Authorization=Bearer {token}"
        warm = ws.build(*TARGETS, *common, bearer, output_base=tmp_path / "ob-laptop")
        assert warm.hit_rate >= 0.95, warm.describe()

        build_file = ws.root / "gen" / "BUILD"
        build_file.write_text(build_file.read_text().replace("hello from granary", "hello from a laptop"))
        local = ws.build(*TARGETS, *common, bearer, output_base=tmp_path / "ob-laptop")
        assert local.non_internal >= 1, local.describe()
        assert "Writing to Remote Cache" in local.output, local.describe()  # refused uploads
        assert server.action_results() == written
