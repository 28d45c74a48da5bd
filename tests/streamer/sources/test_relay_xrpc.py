"""``skyattr relay`` answers the XRPC queries a relay's consumers call besides the firehose."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import libipld

from streamer.sources.archive import read_archive
from streamer.sources.relay_server import Relay
from streamer.testing.synth import default_archive


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Type"] == "application/json"
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _heads() -> dict[str, tuple[str, str]]:
    """Each repo's last commit (CID, rev) in the bundled archive, read independently of the relay."""
    heads: dict[str, tuple[str, str]] = {}
    for item in read_archive(default_archive()):
        header, body = libipld.decode_dag_cbor_multi(item.frame)
        if header.get("t") == "#commit":
            heads[body["repo"]] = (libipld.encode_cid(body["commit"]), body["rev"])
    return heads


def test_the_relay_serves_health_hosts_repos_and_latest_commits() -> None:
    heads = _heads()

    async def run() -> dict[str, Any]:
        async with Relay(default_archive()) as relay:
            base = f"http://127.0.0.1:{relay.port}/xrpc/"
            out: dict[str, Any] = {"last": relay.range.last_seq if relay.range else None}
            out["health"] = await asyncio.to_thread(_get, base + "_health")
            out["hosts"] = await asyncio.to_thread(_get, base + "com.atproto.sync.listHosts")
            pages, cursor = [], ""
            while True:
                code, page = await asyncio.to_thread(
                    _get, base + "com.atproto.sync.listRepos?limit=300" + (f"&cursor={cursor}" if cursor else "")
                )
                assert code == 200, page
                pages.append(page)
                cursor = page.get("cursor", "")
                if not cursor:
                    break
            out["pages"] = pages
            some = sorted(heads)[7]
            out["latest"] = await asyncio.to_thread(_get, base + f"com.atproto.sync.getLatestCommit?did={some}")
            out["status"] = await asyncio.to_thread(_get, base + f"com.atproto.sync.getRepoStatus?did={some}")
            out["missing"] = await asyncio.to_thread(
                _get, base + "com.atproto.sync.getLatestCommit?did=did:plc:nobodynobodynobodynobody"
            )
            out["bad_limit"] = await asyncio.to_thread(_get, base + "com.atproto.sync.listRepos?limit=0")
            out["unknown"] = await asyncio.to_thread(_get, base + "com.atproto.sync.getBlob?did=x&cid=y")
            out["some"] = some
            return out

    out = asyncio.run(run())
    assert out["health"][0] == 200 and out["health"][1]["version"].startswith("skyattr relay ")
    code, hosts = out["hosts"]
    assert code == 200 and hosts["hosts"][0]["seq"] == out["last"] and hosts["hosts"][0]["accountCount"] == len(heads)
    repos = [r for page in out["pages"] for r in page["repos"]]
    assert len(out["pages"]) == -(-len(heads) // 300), "pages of at most 300"
    assert [r["did"] for r in repos] == sorted(heads), "every repo once, in DID order"
    assert all((r["head"], r["rev"]) == heads[r["did"]] and r["active"] for r in repos)
    assert out["latest"] == (200, {"cid": heads[out["some"]][0], "rev": heads[out["some"]][1]})
    assert out["status"] == (200, {"did": out["some"], "active": True, "rev": heads[out["some"]][1]})
    assert out["missing"][0] == 400 and out["missing"][1]["error"] == "RepoNotFound"
    assert out["bad_limit"][0] == 400 and out["bad_limit"][1]["error"] == "InvalidRequest"
    assert out["unknown"][0] == 501 and out["unknown"][1]["error"] == "MethodNotImplemented"
