"""Installing Granary honestly: optional backends are extras that a plain install runs without,
a config naming one whose library is missing stops start-up with one line naming the extra, and
the dependency floors in pyproject.toml are at least what the generated code demands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest
from rwapi import ExecClient, final
from serverutil import start_granary

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "src" / "granary" / "_proto"
BLOCKED = ("redis", "aiobotocore", "botocore", "psycopg")


@pytest.fixture
def without_extras(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import redis, aiobotocore, botocore nor psycopg, as after
    a plain `pip install granary`: a directory ahead on PYTHONPATH whose packages of those names
    raise ImportError."""
    shim = tmp_path / "no-extras"
    for name in BLOCKED:
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (test shim)')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shim), *filter(None, [env.get("PYTHONPATH")])])
    return env


def serve_fails(tmp_path: Path, env: dict[str, str], config: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "granary.yaml"
    cfg.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir",
         str(tmp_path / "data"), "--config", str(cfg)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


REDIS_URL = "redis://127.0.0.1:6379/0"
S3 = "bucket: granary, endpoint_url: 'http://127.0.0.1:9000'"
PG_URL = "postgresql+psycopg://granary@127.0.0.1:5432/granary"
NEEDS = {
    "redis": "needs the redis library: pip install 'granary[redis]'",
    "s3": "needs the aiobotocore library: pip install 'granary[s3]'",
    "postgres": "needs the psycopg library: pip install 'granary[postgres]'",
}


@pytest.mark.parametrize("config, where, extra", [
    (f"""
storage:
  cache: {{type: redis, url: "{REDIS_URL}"}}
  main: {{type: tiered, cache: cache, fallback: {{type: memory}}}}
instances: {{"*": {{cas: main}}}}
""", "storage.cache.type: redis", "redis"),
    (f"""
storage: {{main: {{type: memory}}}}
action_caches: {{main: {{type: redis, url: "{REDIS_URL}"}}}}
instances: {{"*": {{cas: main, action_cache: main}}}}
""", "action_caches.main.type: redis", "redis"),
    (f"""
storage: {{main: {{type: s3, {S3}}}}}
instances: {{"*": {{cas: main}}}}
""", "storage.main.type: s3", "s3"),
    (f"""
storage: {{main: {{type: disk, path: cas}}}}
action_caches: {{main: {{type: s3, {S3}}}}}
instances: {{"*": {{cas: main, action_cache: main}}}}
""", "action_caches.main.type: s3", "s3"),
    (f"""
storage:
  main: {{type: indexed, url: "{PG_URL}", store: {{type: disk, path: cas}}, max_size: 1GiB}}
instances: {{"*": {{cas: main}}}}
""", "storage.main.url: postgresql", "postgres"),
    (f"""
storage: {{main: {{type: disk, path: cas}}}}
action_caches: {{main: {{type: sql, url: "{PG_URL}"}}}}
instances: {{"*": {{cas: main, action_cache: main}}}}
""", "action_caches.main.url: postgresql", "postgres"),
    (f"""
storage: {{main: {{type: disk, path: cas}}}}
action_caches: {{main: {{type: disk, path: ac}}}}
instances: {{"*": {{cas: main, action_cache: main}}}}
execution: {{database: "{PG_URL}", local_workers: 0}}
""", "execution.database: postgresql", "postgres"),
], ids=["redis-cas", "redis-ac", "s3-cas", "s3-ac", "indexed-postgres", "sql-ac-postgres", "execution-postgres"])
def test_backend_without_its_library_stops_start_up_naming_the_extra(tmp_path, without_extras, config, where,
                                                                     extra):
    done = serve_fails(tmp_path, without_extras, config)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"granary: configuration error: {where} {NEEDS[extra]}"]
    assert done.stdout == ""
    # `granary config check` refuses what serve would refuse
    cfg = tmp_path / "granary.yaml"
    checked = subprocess.run([sys.executable, "-m", "granary", "config", "check", str(cfg)],
                             env=without_extras, capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 2, checked.stdout
    assert checked.stderr.splitlines() == [f"granary: configuration error: {cfg}: {where} {NEEDS[extra]}"]


def test_plain_install_serves_disk_and_sqlite_without_the_extras(tmp_path, without_extras, monkeypatch):
    """The default configuration (disk CAS, SQLite action cache and queue, local workers) imports
    none of the extras' libraries: with every one of them unimportable it stores and executes."""
    monkeypatch.setenv("PYTHONPATH", without_extras["PYTHONPATH"])
    with start_granary(tmp_path, None, processes=2) as server:
        client = ExecClient(server.address)
        try:
            [d] = client.upload(b"plain install")
            assert client.missing([d]) == []
            action, _ = client.action(["sh", "-c", "echo plain > out"])
            response = final(client.execute(action, timeout=120))
            assert response.status.code == 0 and response.result.exit_code == 0
            [out] = response.result.output_files
            assert client.bs_read(out.digest) == b"plain\n"
        finally:
            client.close()
    log = server.log.read_text()
    assert "ImportError" not in log and "Traceback" not in log, log


def _floors() -> dict[str, tuple[int, ...]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for req in project["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?>=([0-9.]+)(?:,.*)?", req)
        assert m, f"dependency {req!r} has no >= floor"
        out[m.group(1).lower()] = tuple(int(p) for p in m.group(2).split("."))
    return out


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_floors_admit_no_grpcio_or_protobuf_older_than_the_generated_code_needs():
    floors = _floors()
    grpc_needs = {_version(v) for f in PROTO_DIR.rglob("*_pb2_grpc.py")
                  for v in re.findall(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", f.read_text())}
    protobuf_needs = {
        tuple(int(n) for n in m)
        for f in PROTO_DIR.rglob("*_pb2.py")
        for m in re.findall(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),"
                            r"\s*(\d+),", f.read_text())
    }
    assert grpc_needs and protobuf_needs, "no generated version checks found"
    assert floors["grpcio"] >= max(grpc_needs), (floors["grpcio"], grpc_needs)
    assert floors["protobuf"] >= max(protobuf_needs), (floors["protobuf"], protobuf_needs)
    # and what is installed here satisfies the generated code (else importing it would have failed)
    assert _version(grpc.__version__.split("rc")[0])[:3] >= max(grpc_needs)


def test_extras_and_licence_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, extras = meta["project"], meta["project"]["optional-dependencies"]
    deps = " ".join(project["dependencies"]).lower()
    assert not any(lib in deps for lib in ("redis", "aiobotocore", "psycopg")), deps
    assert [r.split(">=")[0] for r in extras["redis"]] == ["redis"]
    assert [r.split(">=")[0] for r in extras["s3"]] == ["aiobotocore"]
    assert [r.split(">=")[0] for r in extras["postgres"]] == ["psycopg[binary]"]
    assert extras["all"] == ["granary[redis,s3,postgres]"] and "granary[all]" in extras["test"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
