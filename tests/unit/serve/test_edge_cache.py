"""The gateway's exact-repeat cache: one corpus version at a time, LRU and TTL from the retriever's settings."""

from __future__ import annotations

from x0tta6bl4.rag.cache import CacheConfig
from x0tta6bl4.serve._private.edge_cache import EdgeCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_stored_or_served_before_the_corpus_version_is_known() -> None:
    edge = EdgeCache()
    assert edge.put("link down", 3, 0, b"{}") is False
    assert edge.get("link down", 3) is None
    edge.observe(0)
    assert edge.put("link down", 3, 0, b"{}") is True
    assert edge.get("link down", 3) == b"{}"


def test_repeats_match_after_case_and_whitespace_normalisation_but_not_across_k() -> None:
    edge = EdgeCache()
    edge.observe(7)
    edge.put("Node 4  is DOWN", 3, 7, b"a")
    assert edge.get("node 4 is down", 3) == b"a"
    assert edge.get("node 4 is down", 2) is None


def test_an_answer_from_another_corpus_version_is_not_stored() -> None:
    edge = EdgeCache()
    edge.observe(100)
    assert edge.put("q", 3, 40, b"stale") is False
    assert edge.get("q", 3) is None


def test_a_new_corpus_version_empties_the_cache() -> None:
    edge = EdgeCache()
    edge.observe(1)
    edge.put("q", 3, 1, b"old")
    edge.observe(1)  # the same version keeps the entries
    assert edge.get("q", 3) == b"old"
    edge.observe(2)
    assert edge.get("q", 3) is None
    stats = edge.stats()
    assert stats["invalidations"] == 1 and stats["corpus_version"] == 2 and stats["size"] == 0


def test_entries_expire_and_the_least_recently_used_goes_first() -> None:
    clock = Clock()
    edge = EdgeCache(CacheConfig(max_entries=2, ttl_s=10.0), clock=clock)
    edge.observe(0)
    edge.put("a", 1, 0, b"a")
    edge.put("b", 1, 0, b"b")
    assert edge.get("a", 1) == b"a"  # "b" is now the least recently used
    edge.put("c", 1, 0, b"c")
    assert edge.get("b", 1) is None and edge.get("a", 1) == b"a"
    clock.now = 11.0
    assert edge.get("a", 1) is None
    stats = edge.stats()
    assert stats["evictions"] == 1 and stats["expirations"] == 1
    assert stats["hits"] == 2 and stats["misses"] == 2 and stats["hit_rate"] == 0.5


def test_a_disabled_cache_never_hits() -> None:
    edge = EdgeCache(CacheConfig(enabled=False))
    edge.observe(0)
    edge.put("q", 3, 0, b"x")
    assert edge.get("q", 3) is None
