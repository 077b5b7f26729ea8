"""`imgvec similar`: each query (a path already in the output, or an image file) -> the k most similar images.

With an index (answers.index) the search is the index's; without one, or with `exact`, every vector is
compared, one part at a time, so memory stays that of one part whatever the output's size.
"""

from __future__ import annotations

import os

import numpy as np

from imgvec.answers.index import NeighbourIndex
from imgvec.base import defaults
from imgvec.dataset.searchable import Searchable, open_searchable
from imgvec.kernels.similarity import Best, normalise


def find_similar(output: str, queries: list[str], k: int = defaults.K, *, exact: bool = False,
                 texts: list[str] = ()) -> tuple[str, list]:
    """(how the search was made, [{query, matches: [{rank, path, similarity}]}]); ValueError for bad input.

    `texts`: text queries, for outputs of a CLIP-family model (its text tower runs here, with the recorded
    weights, checked by sha256)."""
    if k < 1:
        raise ValueError(f"-k must be at least 1, not {k}")
    if not queries and not texts:
        raise ValueError("give a QUERY (an image file or a path in the output) or --text")
    features = open_searchable(output)
    if texts and not _entry(features).text:
        raise ValueError(f"{features.location} holds features of {features.metadata.get('model')}, which embeds "
                         "images only: --text needs an output of a CLIP-family model (open_clip:ARCH/PRETRAINED, "
                         "clip_vit_b32)")
    index = None if exact else NeighbourIndex.open(features.dataset, metadata=features.metadata, parts=features.parts)
    ranges = index.description.get("path_ranges") if index else None  # saves reading every part's footer
    vectors, own_ids = _query_vectors(features, queries, ranges) if queries else (np.empty((0, features.dim)), [])
    if texts:
        vectors = np.concatenate([vectors, _recorded_vectorizer(features).embed_text(texts)]).astype(np.float32)
        own_ids = [*own_ids, *[-1] * len(texts)]
    asked = [*queries, *texts]
    if index is not None:
        how = index.summary
        similarities, ids = index.search(vectors, k + 1)
    else:
        how = "exact search"
        similarities, ids = exact_search(features, vectors, k + 1)
    results = []
    for n, (query, own, row_similarities, row_ids) in enumerate(zip(asked, own_ids, similarities, ids, strict=True)):
        keep = [(s, i) for s, i in zip(row_similarities, row_ids, strict=True) if i >= 0 and i != own][:k]
        # the matches' rows, and the query's own when it is in the output (its size, where it is read again): one read
        rows = features.rows([i for _, i in keep] + ([own] if own >= 0 else []), SHOWN).to_pylist()
        result = {"query": query, "search": how, **({"text": True} if n >= len(queries) else {}), "matches": [
            {"rank": r + 1, **_present(row), "similarity": round(float(s), 6)}
            for r, ((s, _), row) in enumerate(zip(keep, rows[: len(keep)], strict=True))]}
        if own >= 0:
            result.update({k: v for k, v in _present(rows[-1]).items() if k != "path"})
        results.append(result)
    return how, results


SHOWN = ("path", "bytes", "input")  # of each match: where it is, its size, where its image is read again


def _present(row: dict) -> dict:
    """A row's path, size and input: the input only where it has one (a table's row)."""
    return {"path": row["path"], "bytes": row["bytes"], **({"input": row["input"]} if row["input"] else {})}


def _query_vectors(features: Searchable, queries: list[str], ranges: dict | None) -> tuple[np.ndarray, list[int]]:
    """Each query's features and its own row id in the output (-1 for an image file from elsewhere)."""
    dataset = features.dataset
    spellings = {query: _spellings(query) for query in queries}
    known = features.lookup({s for candidates in spellings.values() for s in candidates}, ranges)
    vectors, ids, vectorizer = [], [], None
    for query in queries:
        hit = next((known[s] for s in spellings[query] if s in known), None)
        if hit is not None:
            if hit[1] is None:
                raise ValueError(f"query {query} is in {dataset.location} without features (its image failed)")
            ids.append(hit[0])
            vectors.append(hit[1])
        elif os.path.isfile(query):
            vectorizer = vectorizer or _recorded_vectorizer(features)
            features, errors = vectorizer.embed([open(query, "rb").read()])
            if errors[0]:
                raise ValueError(f"query {query} cannot be used: {errors[0]}")
            ids.append(-1)
            vectors.append(features[0])
        else:
            raise ValueError(f"query {query} is neither an image file nor a path in {dataset.location}")
    return np.stack(vectors).astype(np.float32), ids


def exact_search(features: Searchable, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every vector compared, one part at a time: (similarities, ids), each [len(queries), k], best first."""
    queries = normalise(queries)
    best = Best(len(queries), k)
    for number in range(len(features.parts)):
        ids, vectors = features.vectors(number)
        if len(ids):
            best.update(queries @ normalise(vectors).T, ids)
    return best.similarities, best.ids


def _entry(features: Searchable):
    from imgvec.models.registry import get_model

    return get_model(features.metadata.get("model"))


def _recorded_vectorizer(features: Searchable):
    """The model and weights that made the features, or an error if they cannot be had identically."""
    from imgvec.features.vectorizer import recorded_vectorizer

    try:
        return recorded_vectorizer(features.metadata, features.location)
    except ValueError as error:
        raise ValueError(f"{error}; query with a path that is already in it") from None


def _spellings(query: str) -> list[str]:
    absolute = os.path.abspath(query)
    return [query, f"file:{absolute}", f"file://{absolute}", absolute]
