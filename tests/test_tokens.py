"""Scoped bearer tokens against a real ``tessera serve``: tokens made by ``tessera token new``, their
``[tokens.NAME]`` lines put in the config, then every way a request can be refused or let through."""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pyvips
from hypothesis import given
from hypothesis import strategies as st

from tessera.config import ConfigError, load_settings
from tessera.tokens import (
    Denial,
    Grant,
    TokenHash,
    TokenRegistry,
    covers,
    new_token,
    prefix_segments,
    split_token,
)
from tests.support.tessera_server import TESSERA, tessera_server, write_config
from tests.test_front import nginx_front

SERVER_TOKEN = "all-the-powers"


@dataclass
class Server:
    base: str
    config: Path
    tokens: dict[str, str]  # name -> token as `tessera token new` printed it

    def auth(self, name: str) -> dict[str, str]:
        token = SERVER_TOKEN if name == "server" else self.tokens[name]
        return {"Authorization": f"Bearer {token}"}

    def post(self, action: str, path: str, who: str | None = None) -> httpx.Response:
        headers = self.auth(who) if who else {}
        return httpx.post(f"{self.base}/api/v1/cache/{action}", json={"path": path}, headers=headers)

    def get(self, path: str, who: str | None = None, **headers: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers={**(self.auth(who) if who else {}), **headers})


def make_token(name: str, scopes: str, *prefixes: str) -> tuple[str, str]:
    """``tessera token new``: the token (first line) and the TOML section (after a blank line)."""
    args = [TESSERA, "token", "new", name, "--scopes", scopes]
    for prefix in prefixes:
        args += ["--prefix", prefix]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    token, blank, *section = done.stdout.splitlines()
    assert blank == "" and "shown this once" in done.stderr
    return token, "\n".join(section) + "\n"


def make_tree(root: Path) -> None:
    for mount in ("images", "imagesX", "private"):
        (root / mount / "docs").mkdir(parents=True)
        (root / mount / "docs" / "a.txt").write_text(f"{mount} a\n")
        (root / mount / "b.txt").write_text(f"{mount} b\n")
    picture = pyvips.Image.black(64, 48, bands=3).linear(1, [200, 30, 30]).cast("uchar")
    picture.write_to_file(str(root / "private" / "docs" / "pic.jpg"))
    picture.write_to_file(str(root / "images" / "pic.jpg"))


MOUNTS = """
[cache]
dir = "{cache}"
disk_size = "64MB"
block_size = "256KB"
[images]
thumbnail_sizes = [32]
[mounts.images]
origin = "file://ROOT/images"
[mounts.imagesX]
origin = "file://ROOT/imagesX"
[mounts.private]
origin = "file://ROOT/private"
public = false
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tokens")
    make_tree(tmp / "data")
    tokens, sections = {}, []
    for name, scopes, prefixes in (
        ("images_admin", "admin", ["/images"]),
        ("writer", "write", []),
        ("docs_reader", "read", ["/private/docs/"]),
        ("operator", "admin,read", []),
    ):
        tokens[name], section = make_token(name, scopes, *prefixes)
        sections.append(section)
    body = MOUNTS.replace("ROOT", str(tmp / "data")) + "\n".join(sections)
    config, port = write_config(tmp, body, server=f'access_log = false\ntoken = "{SERVER_TOKEN}"')
    with tessera_server(config, port, tmp / "serve.log") as base:
        yield Server(base, config, tokens)


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "Unauthorized"


# ---------------------------------------------------------------- cache operations: admin


def test_cache_operations_without_a_valid_token_are_401(server: Server) -> None:
    url = f"{server.base}/api/v1/cache/purge"
    body = {"path": "/images/b.txt"}
    assert_unauthorized(httpx.post(url, json=body))
    assert_unauthorized(httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}))
    right_id_wrong_secret = server.tokens["operator"][:-4] + "AAAA"
    assert_unauthorized(
        httpx.post(url, json=body, headers={"Authorization": f"Bearer {right_id_wrong_secret}"})
    )
    unknown_id = "tsr_000000000000_" + server.tokens["operator"].split("_", 2)[2]
    assert_unauthorized(httpx.post(url, json=body, headers={"Authorization": f"Bearer {unknown_id}"}))
    token = server.tokens["operator"]
    assert_unauthorized(httpx.post(url, json=body, headers={"Authorization": f"Basic {token}"}))
    # Only the Authorization header counts: never a query string or a cookie.
    assert_unauthorized(httpx.post(f"{url}?access_token={token}&token={token}", json=body))
    assert_unauthorized(httpx.post(url, json=body, cookies={"token": token, "access_token": token}))
    # The token is checked before the body: no token and a bad body is still a 401.
    assert_unauthorized(httpx.post(url, json={"nope": 1}))


def test_a_token_without_the_admin_scope_is_403(server: Server) -> None:
    for who in ("writer", "docs_reader"):
        refused = server.post("purge", "/images/b.txt", who)
        assert refused.status_code == 403
        assert refused.json() == {
            "error": "Forbidden",
            "detail": f"token {who} does not have the admin scope",
        }


def test_prefixes_match_on_segment_boundaries(server: Server) -> None:
    assert server.post("pin", "/images/docs/", "images_admin").json() == {
        "objects": 1,
        "bytes": len("images a\n"),
    }
    assert server.post("unpin", "/images/docs/", "images_admin").json() == {"unpinned": 1}
    assert server.post("warm", "/images", "images_admin").status_code == 200  # the prefix itself
    assert server.post("purge", "/images/", "images_admin").status_code == 200
    for outside in ("/imagesX/b.txt", "/imagesX/", "/imagesX", "/private/b.txt"):
        refused = server.post("purge", outside, "images_admin")
        assert refused.status_code == 403, outside
        assert "outside its prefixes" in refused.json()["detail"]
    # Paths that would only get inside the prefix by a trick are refused by the namespace (400).
    for trick in ("/images/../imagesX/b.txt", "/images/./b.txt", "/images//b.txt", "//images/b.txt"):
        assert server.post("purge", trick, "images_admin").status_code == 400, trick
    assert server.post("purge", "/imagesX/b.txt", "operator").status_code == 200  # no prefixes: all


def test_server_token_has_every_scope_on_every_path(server: Server) -> None:
    for path in ("/images/", "/imagesX/", "/private/"):
        assert server.post("warm", path, "server").json()["objects"] >= 2
    assert server.get("/api/v1/files/private/b.txt", "server").text == "private b\n"
    assert server.get("/iiif/3/private%2Fdocs%2Fpic.jpg/info.json", "server").json()["width"] == 64


def test_stats_details_need_an_admin_token_for_every_path(server: Server) -> None:
    assert server.post("warm", "/images/", "server").status_code == 200
    assert "top" not in server.get("/api/v1/cache/stats").json()
    assert "top" not in server.get("/api/v1/cache/stats", "images_admin").json()  # not every path
    assert "top" not in server.get("/api/v1/cache/stats", "writer").json()
    assert "top" in server.get("/api/v1/cache/stats", "operator").json()
    assert "top" in server.get("/api/v1/cache/stats", "server").json()


# ---------------------------------------------------------------- reads of a non-public mount


def test_public_mounts_need_no_token_and_may_be_cached_by_anyone(server: Server) -> None:
    public = server.get("/api/v1/files/images/docs/a.txt")
    assert public.status_code == 200 and public.text == "images a\n"
    assert public.headers["cache-control"].startswith("public")
    # A token that may not read is no reason to refuse a public read.
    assert server.get("/api/v1/files/imagesX/b.txt", "writer").status_code == 200


def test_a_non_public_mount_needs_a_read_token_in_the_files_api(server: Server) -> None:
    assert_unauthorized(server.get("/api/v1/files/private/docs/a.txt"))
    assert_unauthorized(server.get("/api/v1/files/private/docs/a.txt", Authorization="Bearer nope"))
    head = httpx.head(f"{server.base}/api/v1/files/private/docs/a.txt")
    assert head.status_code == 401 and head.headers["www-authenticate"] == "Bearer"
    read = server.get("/api/v1/files/private/docs/a.txt", "docs_reader")
    assert read.status_code == 200 and read.text == "private a\n"
    assert read.headers["cache-control"].startswith("private")
    ranged = server.get("/api/v1/files/private/docs/a.txt", "docs_reader", Range="bytes=0-6")
    assert ranged.status_code == 206 and ranged.text == "private"
    head = httpx.head(f"{server.base}/api/v1/files/private/docs/a.txt", headers=server.auth("docs_reader"))
    assert head.status_code == 200 and head.headers["content-length"] == "10"
    outside = server.get("/api/v1/files/private/b.txt", "docs_reader")
    assert outside.status_code == 403 and "outside its prefixes" in outside.json()["detail"]
    no_scope = server.get("/api/v1/files/private/docs/a.txt", "images_admin")
    assert no_scope.status_code == 403 and "read scope" in no_scope.json()["detail"]
    assert server.get("/api/v1/files/private/b.txt", "operator").text == "private b\n"
    # A trick path naming the private mount first is still asked for a token, then refused as a path.
    assert_unauthorized(server.get("/api/v1/files/private/docs/..%2Fb.txt"))
    assert server.get("/api/v1/files/private/docs/..%2Fb.txt", "docs_reader").status_code == 400


def test_a_non_public_mount_needs_a_read_token_in_iiif(server: Server) -> None:
    info = "/iiif/3/private%2Fdocs%2Fpic.jpg/info.json"
    refused = server.get(info)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.headers["content-type"].startswith("text/plain")  # IIIF errors are plain text
    assert refused.headers["access-control-allow-origin"] == "*"
    assert server.get(info, "images_admin").status_code == 403
    assert server.get("/iiif/2/private%2Fb.txt/info.json", "docs_reader").status_code == 403  # outside
    allowed = server.get(info, "docs_reader")
    assert allowed.status_code == 200 and allowed.json()["height"] == 48
    assert allowed.headers["cache-control"].startswith("private")
    tile = "/iiif/3/private%2Fdocs%2Fpic.jpg/full/32,/0/default.jpg"
    assert server.get(tile).status_code == 401
    image = server.get(tile, "docs_reader")
    assert image.status_code == 200 and pyvips.Image.new_from_buffer(image.content, "").width == 32
    assert image.headers["cache-control"].startswith("private")
    assert server.get(tile, "docs_reader", **{"If-None-Match": image.headers["etag"]}).status_code == 304
    thumbs = "/thumbs/private%2Fdocs%2Fpic.jpg/info.json"
    assert server.get(thumbs).status_code == 401
    assert server.get(thumbs, "docs_reader").json()["sizes"] == [{"width": 32, "height": 24}]


def test_the_nginx_front_never_caches_what_a_token_was_needed_for(server: Server, tmp_path: Path) -> None:
    with nginx_front(server.config, tmp_path / "run") as front:
        private = "/iiif/3/private%2Fdocs%2Fpic.jpg/full/16,/0/default.jpg"
        reader = server.auth("docs_reader")
        for _ in range(2):
            with_token = front.get(private, headers=reader)
            assert with_token.status_code == 200 and with_token.headers["x-cache-status"] == "BYPASS"
            anonymous = front.get(private)
            assert anonymous.status_code == 401 and anonymous.headers["x-cache-status"] == "MISS"
        public = "/iiif/3/images%2Fpic.jpg/full/16,/0/default.jpg"
        assert [front.get(public).headers["x-cache-status"] for _ in range(2)] == ["MISS", "HIT"]


# ---------------------------------------------------------------- no token configured


def test_without_any_token_writes_and_private_reads_are_403(tmp_path: Path) -> None:
    make_tree(tmp_path / "data")
    config, port = write_config(tmp_path, MOUNTS.replace("ROOT", str(tmp_path / "data")))
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        refused = httpx.post(f"{base}/api/v1/cache/warm", json={"path": "/images/"})
        assert refused.status_code == 403
        assert refused.json()["detail"].startswith("cache operations are disabled: set server.token")
        private = httpx.get(f"{base}/api/v1/files/private/b.txt")
        assert private.status_code == 403 and "add [tokens.NAME]" in private.json()["detail"]
        assert httpx.get(f"{base}/api/v1/files/images/b.txt").status_code == 200


# ---------------------------------------------------------------- tessera token new and the config


def test_token_new_prints_the_token_once_and_lines_the_config_reads(tmp_path: Path) -> None:
    token, section = make_token("ci", "write,read,write", "/incoming/", "/images")
    parsed = tomllib.loads(section)["tokens"]["ci"]
    assert parsed["scopes"] == ["read", "write"] and parsed["prefixes"] == ["/incoming", "/images"]
    parts = split_token(token)
    assert token not in section and parts is not None
    assert TokenHash.parse(parsed["hash"]).matches(parts[1])
    (tmp_path / "t.toml").write_text(section)
    settings = load_settings(tmp_path / "t.toml")
    assert settings.tokens["ci"].prefixes == ["/incoming", "/images"]
    for bad in (
        ["a__b", "--scopes", "read"],
        ["ci", "--scopes", "root"],
        ["ci", "--scopes", "read", "--prefix", "x"],
    ):
        refused = subprocess.run([TESSERA, "token", "new", *bad], capture_output=True, text=True)
        assert refused.returncode == 2 and refused.stdout == "" and "error:" in refused.stderr


def test_tokens_from_the_environment_and_typos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token, token_hash = new_token()
    monkeypatch.setenv("TESSERA_TOKENS__CI__HASH", str(token_hash))
    monkeypatch.setenv("TESSERA_TOKENS__CI__SCOPES", "admin,read")
    monkeypatch.setenv("TESSERA_TOKENS__CI__PREFIXES", "/images,/incoming/")
    entry = load_settings().tokens["ci"]
    assert entry.scopes == ["read", "admin"] and entry.prefixes == ["/images", "/incoming"]
    monkeypatch.setenv("TESSERA_TOKENS__CI__PREFIXES", '["/a"]')  # JSON works too
    assert load_settings().tokens["ci"].prefixes == ["/a"]
    monkeypatch.setenv("TESSERA_TOKEN", token)  # the client commands' token is not a setting
    assert load_settings().tokens["ci"].scopes == ["read", "admin"]
    monkeypatch.setenv("TESSERA_TOKENZ", "x")
    with pytest.raises(ConfigError, match="unknown environment variable TESSERA_TOKENZ"):
        load_settings()
    monkeypatch.delenv("TESSERA_TOKENZ")
    monkeypatch.setenv("TESSERA_TOKENS__CI__SCOPE", "read")
    with pytest.raises(ConfigError, match=r"unknown key tokens.ci.scope \(did you mean scopes\?\)"):
        load_settings()
    monkeypatch.delenv("TESSERA_TOKENS__CI__SCOPE")
    (tmp_path / "t.toml").write_text(
        f'[tokens.ci]\nhash = "{token_hash}"\nscopes = ["root"]\nprefixs = ["/a"]\n'
    )
    monkeypatch.delenv("TESSERA_TOKENS__CI__SCOPES")
    monkeypatch.delenv("TESSERA_TOKENS__CI__PREFIXES")
    with pytest.raises(ConfigError) as problems:
        load_settings(tmp_path / "t.toml")
    assert "unknown key tokens.ci.prefixs (did you mean prefixes?)" in str(problems.value)
    assert "tokens.ci.scopes.0: Input should be 'read', 'write' or 'admin'" in str(problems.value)
    (tmp_path / "t.toml").write_text(
        f'[tokens.a]\nhash = "{token_hash}"\nscopes = ["read"]\n[tokens.b]\nhash = "{token_hash}"\n'
        'scopes = ["read"]\n[tokens.c]\nhash = "plain-token"\nscopes = ["read"]\nprefixes = ["/a/../b"]\n'
    )
    monkeypatch.delenv("TESSERA_TOKENS__CI__HASH")
    with pytest.raises(ConfigError) as problems:
        load_settings(tmp_path / "t.toml")
    assert "tokens.c.hash: not a token hash" in str(problems.value)
    assert "tokens.c.prefixes: prefix '/a/../b' has an empty, '.' or '..' segment" in str(problems.value)
    twice = f'hash = "{token_hash}"\nscopes = ["read"]\n'
    (tmp_path / "t.toml").write_text(f"[tokens.a]\n{twice}[tokens.b]\n{twice}")
    with pytest.raises(ConfigError, match=r"tokens\.b: same token id as tokens\.a"):
        load_settings(tmp_path / "t.toml")


# ---------------------------------------------------------------- the rules themselves


def status(denial: Denial | None) -> int:
    return 200 if denial is None else denial.status


def test_registry_scopes_are_independent_and_write_follows_prefixes() -> None:
    writer, writer_hash = new_token()
    admin, admin_hash = new_token()

    @dataclass
    class Entry:
        hash: str
        scopes: list[str]
        prefixes: list[str] | None

    tokens = TokenRegistry(
        None,
        {
            "w": Entry(str(writer_hash), ["write"], ["/incoming"]),
            "a": Entry(str(admin_hash), ["admin"], None),
        },
    )
    incoming = [prefix_segments("/incoming/x/y.bin")]
    assert status(tokens.check(f"Bearer {writer}", "write", incoming)) == 200
    assert status(tokens.check(f"bearer  {writer} ", "write", incoming)) == 200  # scheme case, spaces
    assert status(tokens.check(f"Bearer {writer}", "write", [("incomingX", "y")])) == 403
    assert status(tokens.check(f"Bearer {writer}", "read", incoming)) == 403
    assert status(tokens.check(f"Bearer {admin}", "write", incoming)) == 403
    assert status(tokens.check(f"Bearer {admin}", "admin", incoming)) == 200
    assert status(tokens.check(None, "write")) == 401
    assert status(tokens.check(f"Bearer {writer}x", "write")) == 401
    assert status(TokenRegistry(None, {}).check(f"Bearer {writer}", "write")) == 403


def test_tokens_and_hashes_round_trip() -> None:
    token, token_hash = new_token()
    assert token.startswith("tsr_") and len(token) > 50
    assert TokenHash.parse(str(token_hash)) == token_hash
    parts = split_token(token)
    assert parts is not None
    token_id, secret = parts
    assert token_id == token_hash.token_id and token_hash.matches(secret)
    assert not token_hash.matches(secret[:-1])
    for bad in ("tsr_", "tsr_abc_def", "tsr_0123456789ab", "tsr_0123456789ab_", "xyz_0123456789ab_s"):
        assert split_token(bad) is None


segment = st.text(
    st.characters(exclude_characters="/\\", exclude_categories=("Cs",)), min_size=1, max_size=6
).filter(lambda s: s not in (".", ".."))
segments = st.lists(segment, max_size=4).map(tuple)


@given(segments, segments)
def test_prefix_rule_is_the_path_itself_or_below_it(prefix: tuple[str, ...], path: tuple[str, ...]) -> None:
    prefix_text, path_text = "/" + "/".join(prefix), "/" + "/".join(path)
    expected = not prefix or path_text == prefix_text or path_text.startswith(prefix_text + "/")
    assert covers(prefix_segments(prefix_text), path) is expected
    assert Grant("t", frozenset({"read"}), (prefix,)).allows(path) is expected
    # Under a prefix at any depth is covered; a sibling that only extends the last name never is.
    assert covers(prefix, prefix + path)
    if prefix:
        assert not covers(prefix, (*prefix[:-1], prefix[-1] + "X", *path))
