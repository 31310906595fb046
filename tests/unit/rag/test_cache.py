"""SemanticCache: exact and semantic hits, scopes, LRU bound, TTL expiry, statistics, thread safety."""

import threading

import numpy as np
import pytest
from pydantic import ValidationError

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.rag.cache import CacheConfig, CacheKey, SemanticCache, normalise_query


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _unit(seed, dim=16):
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _near(v, eps, seed=99):
    noise = np.random.default_rng(seed).normal(size=v.shape).astype(np.float32)
    w = v + eps * noise / np.linalg.norm(noise)
    return w / np.linalg.norm(w)


def test_config_defaults_and_field_descriptions():
    cfg = CacheConfig()
    assert (cfg.max_entries, cfg.ttl_s, cfg.similarity_threshold, cfg.enabled) == (1000, 3600.0, 0.95, True)
    assert all(f.description for f in CacheConfig.model_fields.values())
    with pytest.raises(ValidationError):
        CacheConfig(similarity_threshold=1.5)


def test_exact_key_ignores_case_and_whitespace_but_not_other_parts():
    assert normalise_query("  Node 7\tDOWN \n") == "node 7 down"
    assert CacheKey.of("Node 7 down", 3) == CacheKey.of(" node 7   DOWN", 3)
    assert CacheKey.of("node 7 down", 3) != CacheKey.of("node 7 down", 5)
    assert CacheKey.of("node 7 down", 3).scope == (3,)


def test_exact_hit_needs_no_embedding():
    cache = SemanticCache()
    cache.put(CacheKey.of("q", 3), _unit(0), "answer")
    assert cache.get_exact(CacheKey.of(" Q ", 3)) == "answer"
    assert cache.get_exact(CacheKey.of("q", 4)) is None
    assert cache.stats()["hits_exact"] == 1 and cache.stats()["misses"] == 0  # get_exact misses uncounted
    cache.get_exact(CacheKey.of("other", 3), count_miss=True)
    assert cache.stats()["misses"] == 1


def test_semantic_hit_above_threshold_only_and_within_the_same_scope():
    cache = SemanticCache(CacheConfig(similarity_threshold=0.95))
    v = _unit(1)
    cache.put(CacheKey.of("node 7 is down", 3), v, "A")
    close, far = _near(v, 0.1), _near(v, 0.8)
    assert float(close @ v) > 0.95 > float(far @ v)
    assert cache.get_similar(CacheKey.of("node seven down", 3), close) == "A"
    assert cache.get_similar(CacheKey.of("node seven down", 3), far) is None
    assert cache.get_similar(CacheKey.of("node seven down", 5), close) is None  # other k
    assert cache.get_similar(CacheKey.of("node 7 is down", 3), -v) == "A"  # exact key wins first
    stats = cache.stats()
    assert (stats["hits_semantic"], stats["hits_exact"], stats["misses"]) == (1, 1, 2)
    assert stats["hit_rate"] == pytest.approx(0.5)


def test_semantic_lookup_accepts_any_scale():
    cache = SemanticCache()
    v = _unit(2)
    cache.put(CacheKey.of("a", 1), 7.0 * v, "A")
    assert cache.get_similar(CacheKey.of("b", 1), 0.01 * v) == "A"


def test_lru_eviction_keeps_the_recently_used():
    cache = SemanticCache(CacheConfig(max_entries=3))
    keys = [CacheKey.of(f"q{i}", 1) for i in range(4)]
    for i in range(3):
        cache.put(keys[i], _unit(i), i)
    assert cache.get_exact(keys[0]) == 0  # q0 becomes most recent; q1 is now the oldest
    cache.put(keys[3], _unit(3), 3)
    assert len(cache) == 3
    assert cache.get_exact(keys[1]) is None
    assert [cache.get_exact(keys[i]) for i in (0, 2, 3)] == [0, 2, 3]
    assert cache.get_similar(CacheKey.of("x", 1), _unit(1)) is None  # evicted embedding is gone too
    assert cache.stats()["evictions"] == 1 and cache.stats()["size"] == 3


def test_entries_expire_after_ttl():
    clock = Clock()
    cache = SemanticCache(CacheConfig(ttl_s=10), clock=clock)
    v = _unit(5)
    cache.put(CacheKey.of("q", 1), v, "A")
    clock.now += 9.9
    assert cache.get_exact(CacheKey.of("q", 1)) == "A"
    assert cache.get_similar(CacheKey.of("q2", 1), v) == "A"
    clock.now += 0.2
    assert cache.get_similar(CacheKey.of("q2", 1), v) is None
    assert cache.get_exact(CacheKey.of("q", 1)) is None
    assert cache.stats()["expirations"] == 1 and len(cache) == 0


def test_expired_entries_are_reclaimed_before_evicting_live_ones():
    clock = Clock()
    cache = SemanticCache(CacheConfig(max_entries=2, ttl_s=5), clock=clock)
    cache.put(CacheKey.of("old", 1), _unit(1), "old")
    clock.now += 3
    cache.put(CacheKey.of("young", 1), _unit(2), "young")
    clock.now += 3  # "old" expired, "young" alive
    cache.put(CacheKey.of("new", 1), _unit(3), "new")
    assert cache.get_exact(CacheKey.of("young", 1)) == "young"
    stats = cache.stats()
    assert stats["evictions"] == 0 and stats["expirations"] == 1


def test_put_replaces_a_key_and_clear_empties_but_keeps_stats():
    cache = SemanticCache()
    key = CacheKey.of("q", 1)
    cache.put(key, _unit(1), "v1")
    cache.put(key, _unit(2), "v2")
    assert len(cache) == 1 and cache.get_exact(key) == "v2"
    assert cache.get_similar(CacheKey.of("z", 1), _unit(1)) is None  # the old embedding was replaced
    cache.clear()
    assert len(cache) == 0 and cache.get_exact(key) is None
    assert cache.stats()["hits_exact"] == 1


def test_disabled_cache_stores_nothing():
    cache = SemanticCache(CacheConfig(enabled=False))
    cache.put(CacheKey.of("q", 1), _unit(1), "A")
    assert cache.get_exact(CacheKey.of("q", 1)) is None
    assert cache.get_similar(CacheKey.of("q", 1), _unit(1)) is None
    assert len(cache) == 0


def test_embeddings_must_share_a_dimension_and_be_non_zero():
    cache = SemanticCache()
    cache.put(CacheKey.of("a", 1), _unit(1, dim=16), "A")
    with pytest.raises(ConfigError, match="dim"):
        cache.put(CacheKey.of("b", 1), _unit(1, dim=8), "B")
    with pytest.raises(ConfigError):
        cache.put(CacheKey.of("c", 1), np.zeros(16), "C")
    cache.put(CacheKey.of("d", 1), None, "D")  # exact-only entry
    assert cache.get_exact(CacheKey.of("d", 1)) == "D"


def test_concurrent_use_keeps_the_bound_and_the_counts():
    cache = SemanticCache(CacheConfig(max_entries=50))
    vectors = [_unit(i) for i in range(200)]

    def work(offset):
        for i in range(200):
            j = (i + offset) % 200
            key = CacheKey.of(f"q{j}", 1)
            if cache.get_similar(key, vectors[j]) is None:
                cache.put(key, vectors[j], j)

    threads = [threading.Thread(target=work, args=(o * 37,)) for o in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert len(cache) == stats["size"] == 50
    assert stats["hits_exact"] + stats["hits_semantic"] + stats["misses"] == 800
