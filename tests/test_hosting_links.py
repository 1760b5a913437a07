"""Links of hosted images: the keyed permutation, the SQL link map (SQLite and a real PostgreSQL), and
the block allocator, in one process, across threads and across processes sharing a database."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import assume, given
from hypothesis import strategies as st

from tessera.hosting.allocator import LinkAllocator
from tessera.hosting.linkmap import VERSION_TABLE, ImageRow, LinkMap, LinkSpaceExhausted, link_blocks
from tessera.hosting.permutation import ALPHABET, LinkPermutation
from tests.support import link_workers
from tests.support.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"[0-9A-Za-z]+")
KEY = bytes(range(32))

# -- the permutation ---------------------------------------------------------------------------------

lengths = st.integers(min_value=1, max_value=10)
keys = st.binary(min_size=1, max_size=80)


@given(key=keys, length=lengths, data=st.data())
def test_link_is_valid_and_inverts(key: bytes, length: int, data: st.DataObject) -> None:
    permutation = LinkPermutation(key, length)
    assert permutation.capacity == 62**length
    number = data.draw(st.integers(min_value=0, max_value=permutation.capacity - 1))
    link = permutation.link(number)
    assert len(link) == length and LINK.fullmatch(link)
    assert permutation.number(link) == number


@given(key=keys, length=st.integers(min_value=3, max_value=10), data=st.data())
def test_distinct_numbers_give_distinct_links(key: bytes, length: int, data: st.DataObject) -> None:
    permutation = LinkPermutation(key, length)
    numbers = data.draw(
        st.lists(st.integers(0, permutation.capacity - 1), min_size=2, max_size=50, unique=True)
    )
    assert len({permutation.link(number) for number in numbers}) == len(numbers)


@given(key=keys, length=st.integers(min_value=3, max_value=10), data=st.data())
def test_every_link_is_the_link_of_its_number(key: bytes, length: int, data: st.DataObject) -> None:
    permutation = LinkPermutation(key, length)
    link = data.draw(st.text(ALPHABET, min_size=length, max_size=length))
    assert permutation.link(permutation.number(link)) == link


@pytest.mark.parametrize("length", [1, 2])
def test_small_spaces_are_covered_exactly_once(length: int) -> None:
    """The whole space: cycle-walking keeps every value below 62**length and loses none."""
    permutation = LinkPermutation(KEY, length)
    links = [permutation.link(number) for number in range(permutation.capacity)]
    assert sorted(links) == sorted("".join(chars) for chars in _words(length))


def _words(length: int) -> Iterator[tuple[str, ...]]:
    return itertools.product(ALPHABET, repeat=length)


@given(first=keys, second=keys)
def test_different_keys_give_different_links(first: bytes, second: bytes) -> None:
    assume(first != second)
    one, other = LinkPermutation(first, 8), LinkPermutation(second, 8)
    numbers = range(0, 1000, 97)
    same = sum(one.link(number) == other.link(number) for number in numbers)
    assert same == 0


def test_lengths_give_unrelated_permutations() -> None:
    short, longer = LinkPermutation(KEY, 7), LinkPermutation(KEY, 8)
    assert sum(longer.link(n).endswith(short.link(n)) for n in range(1000)) < 5


@pytest.mark.parametrize(
    "link", ["", "abc", "abcdefg", "abcdefghi", "abcd-fgh", "abcd_fgh", "abcd fgh", "abcdéfgh", "abcd/fgh"]
)
def test_malformed_links_are_refused(link: str) -> None:
    with pytest.raises(ValueError):
        LinkPermutation(KEY, 8).number(link)


@pytest.mark.parametrize("number", [-1, 62**8, 62**8 + 5])
def test_numbers_outside_the_space_are_refused(number: int) -> None:
    with pytest.raises(ValueError):
        LinkPermutation(KEY, 8).link(number)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        LinkPermutation(b"", 8)
    with pytest.raises(ValueError):
        LinkPermutation(KEY, 0)


def test_consecutive_numbers_give_unrelated_links() -> None:
    """Statistics over 20,000 neighbours: what a sequential counter would show, this must not."""
    permutation = LinkPermutation(KEY, 8)
    count = 20_000
    links = [permutation.link(number) for number in range(count + 1)]
    pairs = list(itertools.pairwise(links))
    # Shared prefix: by chance 1/62 + 1/62**2 + … ≈ 0.0164 characters; a counter shares about 7.
    prefix = sum(_shared_prefix(*pair) for pair in pairs) / count
    assert prefix < 0.03
    # Characters equal at the same position: by chance 1/62 ≈ 0.016.
    same = sum(a == b for left, right in pairs for a, b in zip(left, right, strict=True)) / (count * 8)
    assert 0.010 < same < 0.023
    # The first character is uniform (chi-square, 61 degrees of freedom: 99.99 % below 118).
    firsts = Counter(link[0] for link in links)
    expected = len(links) / 62
    chi2 = sum((firsts[char] - expected) ** 2 / expected for char in ALPHABET)
    assert chi2 < 118
    # Bits of neighbours' permuted values flip half the time (the low 40 bits; the top ones are bounded
    # by the capacity).
    mask = (1 << 40) - 1
    values = [permutation.permute(number) for number in range(count + 1)]
    flips = sum(((a ^ b) & mask).bit_count() for a, b in itertools.pairwise(values)) / (count * 40)
    assert abs(flips - 0.5) < 0.01
    # Neighbours' values are far apart: within 1/1000 of the space of each other about 0.2 % of the time.
    near = sum(abs(a - b) < permutation.capacity // 1000 for a, b in itertools.pairwise(values))
    assert near < count * 0.005


def _shared_prefix(left: str, right: str) -> int:
    return next((index for index, (a, b) in enumerate(zip(left, right, strict=True)) if a != b), len(left))


# -- the link map ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/deep/folder/hosting.sqlite"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url()


@pytest.fixture
def linkmap(url: str) -> Iterator[LinkMap]:
    opened = LinkMap.open(url)
    try:
        yield opened
    finally:
        opened.close()


def image(
    link: str,
    number: int,
    owner: str | None = "alice",
    sha256: str = "0" * 64,
    created: float | None = None,
    derivatives: list[str] | None = None,
) -> ImageRow:
    now = time.time() if created is None else created
    return ImageRow(
        link=link,
        number=number,
        object_key=f"{link}/original",
        owner=owner,
        type="jpeg",
        width=1200,
        height=800,
        bytes=200_000,
        sha256=sha256,
        status="processing",
        delete_token_hash="sha256:abc",
        derivatives=derivatives or [],
        created=now,
        updated=now,
    )


def test_rows_round_trip(linkmap: LinkMap) -> None:
    row = image("aaaaaaaa", 1, created=1000.5)
    linkmap.insert(row)
    assert linkmap.get("aaaaaaaa") == row
    assert linkmap.get("bbbbbbbb") is None

    updated = linkmap.update("aaaaaaaa", status="ready", derivatives=["1024.jpg", "1024.webp"])
    assert updated is not None and updated.status == "ready"
    assert updated.derivatives == ["1024.jpg", "1024.webp"] and updated.updated > 1000.5
    assert linkmap.get("aaaaaaaa") == updated
    assert linkmap.update("bbbbbbbb", status="ready") is None


def test_a_link_or_number_is_stored_once(linkmap: LinkMap) -> None:
    linkmap.insert(image("aaaaaaaa", 1))
    with pytest.raises(sa.exc.IntegrityError):
        linkmap.insert(image("aaaaaaaa", 2))
    with pytest.raises(sa.exc.IntegrityError):
        linkmap.insert(image("cccccccc", 1))
    assert linkmap.get("cccccccc") is None


def test_deleted_stays_deleted(linkmap: LinkMap) -> None:
    linkmap.insert(image("aaaaaaaa", 1, derivatives=["500.jpg"]))
    deleted = linkmap.mark_deleted("aaaaaaaa")
    assert deleted is not None and deleted.status == "deleted" and deleted.derivatives == ["500.jpg"]
    assert linkmap.mark_deleted("aaaaaaaa") is not None  # idempotent
    assert linkmap.mark_deleted("zzzzzzzz") is None
    # A worker finishing after the delete does not bring it back.
    assert linkmap.update("aaaaaaaa", status="ready", derivatives=["500.jpg", "500.webp"]) is None
    row = linkmap.get("aaaaaaaa")
    assert row is not None and row.status == "deleted" and row.derivatives == ["500.jpg"]


def test_duplicates_of_the_same_owner(linkmap: LinkMap) -> None:
    linkmap.insert(image("aaaaaaaa", 1, sha256="1" * 64, created=10.0))
    linkmap.insert(image("bbbbbbbb", 2, sha256="1" * 64, created=20.0))
    linkmap.insert(image("cccccccc", 3, owner=None, sha256="2" * 64))
    found = linkmap.find_duplicate("alice", "1" * 64)
    assert found is not None and found.link == "bbbbbbbb"
    assert linkmap.find_duplicate("bob", "1" * 64) is None
    assert linkmap.find_duplicate("alice", "3" * 64) is None
    assert linkmap.find_duplicate(None, "2" * 64) is None  # anonymous uploads are not deduplicated
    linkmap.mark_deleted("bbbbbbbb")
    found = linkmap.find_duplicate("alice", "1" * 64)
    assert found is not None and found.link == "aaaaaaaa"
    linkmap.mark_deleted("aaaaaaaa")
    assert linkmap.find_duplicate("alice", "1" * 64) is None


def test_listing_pages_are_stable(linkmap: LinkMap) -> None:
    permutation = LinkPermutation(KEY, 8)
    rows = []
    for number in range(25):
        # Pairs of rows share a timestamp: the link breaks the tie.
        row = image(permutation.link(number), number, created=1000.0 + number // 2)
        linkmap.insert(row)
        rows.append(row)
    linkmap.insert(image("bobbobbo", 99, owner="bob"))
    linkmap.mark_deleted(rows[3].link)
    expected = sorted(
        (row.link for row in rows if row is not rows[3]),
        key=lambda link: (next(r.created for r in rows if r.link == link), link),
        reverse=True,
    )

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = linkmap.list_owned("alice", cursor, 7)
        pages += 1
        seen += [row.link for row in page]
        if cursor is None:
            break
        # A row added meanwhile (newer) does not shift the next pages.
        linkmap.insert(image(f"new{pages:05d}", 1000 + pages, created=5000.0 + pages))
    assert seen == expected and pages == 4
    assert linkmap.list_owned("nobody", None, 7) == ([], None)
    for cursor in ("garbage", "1.0~", "x~abc"):
        with pytest.raises(ValueError):
            linkmap.list_owned("alice", cursor, 7)


def test_the_link_key_is_made_once(linkmap: LinkMap, url: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        found = set(pool.map(lambda _: linkmap.link_key(lambda: os.urandom(32)), range(16)))
    assert len(found) == 1 and len(next(iter(found))) == 32
    again = LinkMap.open(url)
    try:
        assert again.link_key(lambda: b"never used") == next(iter(found))
    finally:
        again.close()


def test_migrations_are_idempotent(linkmap: LinkMap, url: str) -> None:
    linkmap.insert(image("aaaaaaaa", 1))
    for _ in range(2):
        LinkMap.open(url).close()
    linkmap.migrate()
    with linkmap.engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    assert versions == ["0001"]
    assert linkmap.get("aaaaaaaa") is not None


def test_processes_opening_a_new_database_at_once(url: str) -> None:
    start_at = time.time() + 1.5
    with _spawn().Pool(4) as pool:
        keys = pool.starmap(link_workers.open_and_read_key, [(url, start_at)] * 4)
    assert len(set(keys)) == 1


def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    linkmap = LinkMap.open(f"sqlite:///{tmp_path}/a/b/c.sqlite")
    try:
        assert (tmp_path / "a" / "b" / "c.sqlite").exists()
        with linkmap.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        linkmap.close()


def test_postgres_without_its_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(RuntimeError, match=r"tessera\[postgres\]"):
        LinkMap.open("postgresql://nobody@127.0.0.1:1/none")


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="neither"):
        LinkMap.open("mysql://root@localhost/db")


# -- the allocator -----------------------------------------------------------------------------------


def test_allocation_spans_blocks_without_duplicates(linkmap: LinkMap) -> None:
    permutation = LinkPermutation(KEY, 8)
    allocator = LinkAllocator(linkmap, permutation, "node-a", 100)
    made = [allocator.allocate() for _ in range(1050)]
    assert [number for number, _ in made] == list(range(1050))
    assert all(permutation.link(number) == link for number, link in made)
    allocator.close()
    with linkmap.engine.connect() as conn:
        held = conn.execute(sa.select(link_blocks.c.start, link_blocks.c.holder)).all()
    assert held == [(1000, None)]  # finished blocks are gone; the last one is released


def test_threads_share_an_allocator(linkmap: LinkMap) -> None:
    allocator = LinkAllocator(linkmap, LinkPermutation(KEY, 8), "node-a", 37)
    results: list[list[tuple[int, str]]] = [[] for _ in range(4)]

    def work(index: int) -> None:
        results[index] = [allocator.allocate() for _ in range(3000)]

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = [pair for result in results for pair in result]
    assert len({number for number, _ in made}) == len({link for _, link in made}) == 12_000


def test_a_released_block_is_finished_by_the_next_holder(linkmap: LinkMap) -> None:
    permutation = LinkPermutation(KEY, 8)
    first = LinkAllocator(linkmap, permutation, "node-a", 100)
    before = [first.allocate()[0] for _ in range(30)]
    first.close()
    second = LinkAllocator(linkmap, permutation, "node-b", 100)
    after = [second.allocate()[0] for _ in range(100)]
    assert before == list(range(30))
    assert after[:70] == list(range(30, 100))  # the free numbers of the released block first
    assert after[70:] == list(range(100, 130))  # then a fresh block
    second.close()


def test_a_crashed_holders_block_is_never_reused(linkmap: LinkMap) -> None:
    permutation = LinkPermutation(KEY, 8)
    crashed = LinkAllocator(linkmap, permutation, "node-a", 100)
    assert [crashed.allocate()[0] for _ in range(5)] == list(range(5))
    # No close(): the process died holding block 0.
    other = LinkAllocator(linkmap, permutation, "node-b", 100)
    assert other.allocate()[0] == 100
    other.close()
    third = LinkAllocator(linkmap, permutation, "node-c", 100)
    assert third.allocate()[0] == 101  # node-b's released block, never node-a's
    third.close()


def test_the_space_runs_out_cleanly(linkmap: LinkMap) -> None:
    permutation = LinkPermutation(KEY, 1)  # 62 links
    allocator = LinkAllocator(linkmap, permutation, "node-a", 25)
    links = [allocator.allocate()[1] for _ in range(62)]
    assert sorted(links) == sorted(ALPHABET)
    with pytest.raises(LinkSpaceExhausted):
        allocator.allocate()


def test_processes_sharing_a_database_never_duplicate(url: str) -> None:
    """4 processes x 20,000 links from blocks of 50 (about 1,600 leases), each releasing its block part
    used and taking another every 2,999 links, so released blocks are leased again while they run."""
    start_at = time.time() + 3
    with _spawn().Pool(4) as pool:
        results = pool.starmap(
            link_workers.allocate, [(url, f"proc-{index}", 20_000, 50, 2_999, start_at) for index in range(4)]
        )
    made = [pair for result in results for pair in result]
    numbers = {number for number, _ in made}
    assert len(numbers) == len({link for _, link in made}) == 80_000
    linkmap = LinkMap.open(url)
    try:
        # All share one key: a link names the same number in every process.
        permutation = LinkPermutation(linkmap.link_key(lambda: b"unused"), 8)
        assert all(permutation.number(link) == number for number, link in made[::97])
        with linkmap.engine.connect() as conn:
            released = conn.execute(
                sa.select(link_blocks.c.start).where(link_blocks.c.holder.is_(None))
            ).all()
    finally:
        linkmap.close()
    # 24 part-used blocks were released on the way; all but the last few were finished by a later lease,
    # so the only numbers never handed out are in the blocks released at the very end.
    assert len(released) <= 4
    assert max(numbers) < 80_000 + 4 * 50


def test_a_crashed_process_leaves_its_block_unused(url: str) -> None:
    """A process that dies holding a part-used block: nobody ever hands out the rest of that block."""
    code = f"from tests.support.link_workers import allocate_and_die; allocate_and_die({url!r}, 30, 100)"
    died = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, check=True
    )
    dead = {int(number) for number in died.stdout.split()}
    assert dead == set(range(30))
    linkmap = LinkMap.open(url)
    try:
        permutation = LinkPermutation(linkmap.link_key(lambda: b"unused"), 8)
        survivor = LinkAllocator(linkmap, permutation, "survivor", 100)
        made = {survivor.allocate()[0] for _ in range(500)}
        survivor.close()
        with linkmap.engine.connect() as conn:
            holders = dict(conn.execute(sa.select(link_blocks.c.start, link_blocks.c.holder)).all())
    finally:
        linkmap.close()
    assert made == set(range(100, 600))
    assert holders[0].startswith("doomed-")  # still leased to the dead process, forever


def test_relative_sqlite_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    LinkMap.open("sqlite:///./var/hosting.sqlite").close()
    assert (tmp_path / "var" / "hosting.sqlite").is_file()


def _spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")
