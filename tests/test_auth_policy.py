"""The Policy, the settings that build it, and start-up errors of credential files."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from granary.auth.htpasswd import HtpasswdFile
from granary.auth.identity import ANONYMOUS, AuthMethod, Identity
from granary.auth.permissions import AnonymousGrant, Permission, Policy, Rule, under_prefix
from granary.auth.settings import AuthSettings, build_auth
from granary.errors import ConfigError, PermissionDenied, Unauthenticated

P = Permission


def test_prefixes_follow_path_segments():
    assert under_prefix("team", "team/") and under_prefix("team/linux", "team")
    assert not under_prefix("teammates", "team") and not under_prefix("teammates/x", "team/")
    assert under_prefix("anything", "") and under_prefix("", "*") and under_prefix("", "")
    assert not under_prefix("", "team")


def test_rules_groups_claims_admin_and_scopes():
    policy = Policy(
        [
            Rule("team/", frozenset({P.CACHE_READ, P.CACHE_WRITE}), identities=frozenset({"alice"})),
            Rule("", frozenset({P.CACHE_READ}), groups=frozenset({"devs"})),
            Rule("ci", frozenset({P.AC_WRITE}), claims={"repository": "org/app", "ref": ["refs/heads/main"]}),
            Rule("", frozenset({P.ADMIN}), identities=frozenset({"root"})),
            Rule("open", frozenset({P.EXECUTE}), identities=frozenset({"*"})),
        ],
        [AnonymousGrant("public/", frozenset({P.CACHE_READ}))],
    )
    alice = Identity("alice", AuthMethod.BASIC)
    policy.check(alice, "team/x", P.CACHE_WRITE)
    with pytest.raises(PermissionDenied, match=r"'alice' \(basic\) lacks permission ac-write on instance 'team/x'"):
        policy.check(alice, "team/x", P.AC_WRITE)
    dev = Identity("bob", AuthMethod.JWT, groups=frozenset({"devs"}))
    policy.check(dev, "any", P.CACHE_READ)
    assert not policy.allows(dev, "any", P.CACHE_WRITE)
    job = Identity("job", AuthMethod.JWT, claims={"repository": "org/app", "ref": "refs/heads/main"})
    policy.check(job, "ci/linux", P.AC_WRITE)
    forked = Identity("job", AuthMethod.JWT, claims={"repository": "org/app", "ref": "refs/heads/evil"})
    assert not policy.allows(forked, "ci/linux", P.AC_WRITE)
    root = Identity("root", AuthMethod.MTLS)
    for p in Permission:
        policy.check(root, "x/y", p)
    policy.check(Identity("anyone", AuthMethod.TOKEN), "open/1", P.EXECUTE)
    # a token's scopes and instance prefix narrow what its owner may do
    scoped = Identity("alice", AuthMethod.TOKEN, scopes=frozenset({"cache-read"}), instance_prefix="team/a")
    policy.check(scoped, "team/a/b", P.CACHE_READ)
    with pytest.raises(PermissionDenied, match=r"scopes \[cache-read\]"):
        policy.check(scoped, "team/a", P.CACHE_WRITE)
    with pytest.raises(PermissionDenied, match="instances under 'team/a'"):
        policy.check(scoped, "team/b", P.CACHE_READ)
    # anonymous: granted where a grant says so, UNAUTHENTICATED elsewhere
    for nobody in (None, ANONYMOUS):
        policy.check(nobody, "public/x", P.CACHE_READ)
        with pytest.raises(Unauthenticated, match="cache-write on instance 'public/x' needs credentials"):
            policy.check(nobody, "public/x", P.CACHE_WRITE)
    # what anonymous may do, any authenticated caller may do too, unless its token says otherwise
    policy.check(Identity("stranger", AuthMethod.BASIC), "public/x", P.CACHE_READ)
    execute_only = Identity("stranger", AuthMethod.TOKEN, scopes=frozenset({"execute"}))
    assert not policy.allows(execute_only, "public/x", P.CACHE_READ)


def test_htpasswd_refuses_entries_that_are_not_bcrypt(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text("ok:$2y$05$abcdefghijklmnopqrstuuKq1A5r5I4bB0aG1fGm9Gf7Zx0Zb6G3e\nold:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    with pytest.raises(ConfigError, match=r"htpasswd:2: user 'old' does not have a bcrypt hash"):
        HtpasswdFile(path)
    path.write_text("broken line\n")
    with pytest.raises(ConfigError, match=r"htpasswd:1: expected 'user:bcrypt-hash'"):
        HtpasswdFile(path)
    with pytest.raises(ConfigError, match="cannot read"):
        HtpasswdFile(tmp_path / "missing")


def test_htpasswd_accepts_apache_2y_hashes(tmp_path):
    import asyncio

    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    (tmp_path / "h").write_text(f"u:{hashed}\n")
    htpasswd = HtpasswdFile(tmp_path / "h")
    assert asyncio.run(htpasswd.authenticate("u", "pw", "test")).name == "u"
    with pytest.raises(Unauthenticated):
        asyncio.run(htpasswd.authenticate("u", "wrong", "test"))


def test_settings_errors_name_the_key(tmp_path):
    with pytest.raises(ValidationError) as exc:
        AuthSettings.model_validate({"rules": [{"instance": "x", "identities": ["a"], "permissions": ["fly"]}]})
    assert "rules.0.permissions.0" in str(exc.value)
    with pytest.raises(ValidationError, match="needs identities, groups or claims"):
        AuthSettings.model_validate({"rules": [{"instance": "x", "permissions": ["cache-read"]}]})
    with pytest.raises(ValidationError, match="lower-case metadata key"):
        AuthSettings.model_validate({"tokens": {"header": "X-Token"}})
    with pytest.raises(ValidationError, match="unknown key"):
        AuthSettings.model_validate({"htpasswd_file": "x"})
    assert not AuthSettings().enabled
    assert AuthSettings.model_validate({"tokens": {}}).enabled
    from granary.auth import settings as st

    for model in (st.AuthSettings, st.TokenSettings, st.JwtSettings, st.MtlsSettings, st.AnonymousSettings,
                  st.RuleSettings, st.TlsSettings):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
    runtime = build_auth(AuthSettings.model_validate({"tokens": {}}), tmp_path)
    assert (tmp_path / "tokens.sqlite").exists()
    runtime.close()


def test_durations_and_the_exposure_check():
    from granary.auth.settings import check_exposure

    jwt = AuthSettings.model_validate(
        {"jwt": {"issuer": "i", "audience": "a", "leeway": "1m", "refresh_seconds": "2h"}}
    ).jwt
    assert jwt is not None and (jwt.leeway, jwt.refresh_seconds) == (60.0, 7200.0)
    with pytest.raises(ValidationError, match="duration like 30s"):
        AuthSettings.model_validate({"tokens": {"cache_seconds": "soon"}})
    open_server = AuthSettings()
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(host, open_server, allow_unauthenticated=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "build-server"):
        with pytest.raises(ConfigError, match=f"{host} is reachable from other hosts"):
            check_exposure(host, open_server, allow_unauthenticated=False)
        check_exposure(host, open_server, allow_unauthenticated=True)
        check_exposure(host, AuthSettings.model_validate({"tokens": {}}), allow_unauthenticated=False)


def test_token_table_created_by_several_processes_at_once(tmp_path):
    import threading

    from granary.auth.tokens import TokenStore

    for trial in range(5):  # without care, most of these trials fail with "table already exists"
        url = f"sqlite:///{tmp_path}/t{trial}.sqlite"
        barrier = threading.Barrier(8)
        errors: list[Exception] = []

        def start(url: str = url, barrier: threading.Barrier = barrier, errors: list[Exception] = errors) -> None:
            store = TokenStore(url)
            barrier.wait()
            try:
                store.create_schema()
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)
            finally:
                store.close()

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
