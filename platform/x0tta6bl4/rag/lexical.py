"""Lexical scoring: the retriever's tokenizer and Okapi BM25 over its chunks."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_TOKEN_RE = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric runs of ``text``, unstemmed (what :func:`tokenize` starts from)."""
    return _TOKEN_RE.findall(text.lower())


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens with a plural ``s`` dropped from words longer than 3 letters."""
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words(text)]


class BM25:
    """Okapi BM25 over a growing list of texts (document ids are list positions).

    Every (term, text) weight is computed once per corpus, into a sparse term-by-text matrix, so
    scoring a batch of queries is one sparse product instead of array work per query word.

    Args:
        k1: term-frequency saturation.
        b: document-length normalisation.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._postings: dict[str, tuple[list[int], list[int]]] = {}
        self._lengths: list[int] = []
        self._terms: dict[str, int] = {}  # term -> row of the weight matrix
        self._weights: Any = None  # scipy CSR [terms, texts]; None until needed after an add

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, texts: Sequence[str]) -> None:
        """Append texts (their ids continue from ``len(self)``)."""
        for text in texts:
            counts = Counter(tokenize(text))
            doc = len(self._lengths)
            self._lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                ids, tfs = self._postings.setdefault(term, ([], []))
                ids.append(doc)
                tfs.append(tf)
        self._weights = None  # idf and the length normaliser moved

    def scores(self, query: str) -> npt.NDArray[np.float64]:
        """BM25 score of every text for ``query`` (a repeated query word counts again).

        Shapes:
            ``[len(self)]`` float64.
        """
        out: npt.NDArray[np.float64] = self.scores_many([query])[0]
        return out

    def scores_many(self, queries: Sequence[str]) -> npt.NDArray[np.float64]:
        """BM25 scores of every text for each query, in one sparse product.

        Shapes:
            ``[len(queries), len(self)]`` float64.
        """
        from scipy import sparse

        weights = self._matrix()
        rows: list[int] = []
        cols: list[int] = []
        for i, query in enumerate(queries):
            for term in tokenize(query):
                col = self._terms.get(term)
                if col is not None:
                    rows.append(i)
                    cols.append(col)
        if not rows:
            return np.zeros((len(queries), len(self._lengths)))
        # Duplicate (query, term) entries are summed: a repeated query word counts again.
        counts = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), len(self._terms)))
        return np.asarray((counts @ weights).toarray(), dtype=np.float64)

    def _matrix(self) -> Any:
        """The [terms, texts] matrix of ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))``."""
        if self._weights is not None:
            return self._weights
        from scipy import sparse

        n = len(self._lengths)
        lengths = np.asarray(self._lengths, dtype=np.float64)
        norm = self.k1 * (1.0 - self.b + self.b * lengths / max(float(lengths.mean()) if n else 0.0, 1e-9))
        self._terms = {term: row for row, term in enumerate(self._postings)}
        indptr = [0]
        ids_all: list[int] = []
        tfs_all: list[int] = []
        idfs: list[float] = []
        for ids, tfs in self._postings.values():
            ids_all.extend(ids)
            tfs_all.extend(tfs)
            indptr.append(len(ids_all))
            idfs.append(math.log(1.0 + (n - len(ids) + 0.5) / (len(ids) + 0.5)))
        ids_arr = np.asarray(ids_all, np.int64)
        tf = np.asarray(tfs_all, np.float64)
        idf = np.repeat(np.asarray(idfs), np.diff(indptr))
        data = idf * tf * (self.k1 + 1.0) / (tf + norm[ids_arr])
        self._weights = sparse.csr_matrix((data, ids_arr, np.asarray(indptr)), shape=(len(self._terms), n))
        return self._weights
