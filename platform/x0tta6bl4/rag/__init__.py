"""Retrieval-augmented remediation: vector index, BM25, on-disk store, ranking, semantic cache, retriever."""
