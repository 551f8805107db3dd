"""A short soak (bench/soak.py): 8 clients for 20 s of mixed cache and execution traffic against a default
`granary serve`; every blob read back is hashed, every action result checked. Nothing here is timed:
it asserts zero errors and zero wrong answers, and only a generous bound on memory growth."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import soak  # bench/ is not a package

pytestmark = pytest.mark.slow


def test_short_soak_has_no_errors_and_no_wrong_bytes(tmp_path: Path) -> None:
    out = io.StringIO()
    res = soak.soak(clients=8, seconds=20, sample=5, processes=2, keep=tmp_path / "soak", out=out)
    soak.report(res, 8, growth=3.0, out=out)
    text = out.getvalue()
    print(text)
    t = res.tally
    assert res.errors == 0, text
    assert res.wrong == 0, text
    # every kind of operation really ran, and each moved what it should
    assert all(t.ok[k] > 0 for k in soak.OPS), text
    assert t.bytes["ByteStream.Write"] > 0 and t.bytes["ByteStream.Read"] > 0 and t.bytes["BatchReadBlobs"] > 0
    # the server's process tree was sampled throughout; a generous bound only (see docs/reliability.md)
    assert len(res.rss) >= 3, text
    assert res.final_rss <= 3 * res.warm_rss, text


def test_soak_client_counts_a_wrong_answer(tmp_path: Path) -> None:
    """The checks can fail: bytes other than those a client expects are reported as wrong."""
    server, address = soak.start_server(tmp_path / "data", tmp_path / "server.log")
    try:
        client = soak.SoakClient(address, seed=1)
        blob, data = client.new_blob(1000)
        client.upload([(blob, data)])
        client.known = [blob]
        client.rng.random = lambda: 0.0  # a ranged read, compared with the bytes regenerated from the seed
        assert client.op_bs_read() > 0  # the right seed: the same bytes
        client.known = [soak.Blob(blob.hash, blob.size, blob.seed + 1)]  # expects other bytes
        with pytest.raises(soak.Wrong):
            client.op_bs_read()
        client.channel.close()
    finally:
        soak.stop_server(server)
