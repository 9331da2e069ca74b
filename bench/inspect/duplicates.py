"""Duplicates: exact (the same SHA-256 of the file) and near (pHash within the threshold,
confirmed by the grey images' correlation), joined into groups of which one file is kept."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import numpy as np

from .files import Findings, Rows
from .hashing import near_duplicate_pairs, pair_correlation, phash, popcount
from .options import SPLIT_ORDER


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclasses.dataclass
class Duplicates:
    """What the duplicate search found: exact groups, confirmed near pairs (rows ``pi < pj``,
    distance ``pd``, correlation ``corr``), their inspect.json rows and the groups."""

    exact_groups: list[list[int]]
    pd: np.ndarray
    same_bytes: np.ndarray
    search: dict
    pair_rows: list[dict]
    by_splits: Counter
    groups: list[dict]


def find_duplicates(rows: Rows, found: Findings, *, near_threshold: int,
                    near_min_corr: float, timing: dict) -> Duplicates:
    """Exact and near duplicates over all rows, within and across splits; every file of a
    group but the kept one is flagged."""
    t = time.perf_counter()
    union = _Union(len(rows))
    exact_groups = _exact_groups(rows.digests, union)
    hashes = phash(rows.images)
    timing["hash_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pi, pj, pd, search = near_duplicate_pairs(hashes, near_threshold)
    corr = pair_correlation(rows.images, pi, pj)
    search["hash_pairs"] = int(len(pi))
    search["rejected_by_correlation"] = int((corr < near_min_corr).sum())
    keep = corr >= near_min_corr
    pi, pj, pd, corr = pi[keep], pj[keep], pd[keep], corr[keep]
    timing["near_search_s"] = time.perf_counter() - t
    for a, b in zip(pi, pj):
        union.union(int(a), int(b))
    digests = rows.digests
    same_bytes = (np.array([digests[a] == digests[b] for a, b in zip(pi, pj)], bool)
                  if digests is not None else np.zeros(len(pi), bool))
    pair_rows, by_splits = _pair_rows(rows, pi, pj, pd, corr, same_bytes)
    touched = set(pi.tolist()) | set(pj.tolist()) | {k for ks in exact_groups for k in ks}
    groups = _groups(rows, found, union, touched, exact_groups, hashes)
    return Duplicates(exact_groups=exact_groups, pd=pd, same_bytes=same_bytes, search=search,
                      pair_rows=pair_rows, by_splits=by_splits, groups=groups)


def _exact_groups(digests: list[bytes] | None, union: _Union) -> list[list[int]]:
    """Rows whose files have the same bytes (two or more), joined in ``union``."""
    exact_groups = []
    if digests is not None:
        by_digest: dict[bytes, list[int]] = {}
        for k, dg in enumerate(digests):
            if dg:
                by_digest.setdefault(dg, []).append(k)
        for ks in by_digest.values():
            if len(ks) > 1:
                exact_groups.append(ks)
                for k in ks[1:]:
                    union.union(ks[0], k)
    return exact_groups


def _pair_rows(rows: Rows, pi, pj, pd, corr, same_bytes) -> tuple[list[dict], Counter]:
    """inspect.json's near pairs, cross-split first, then by distance; counts by splits."""
    split_of, labels = rows.split_of, rows.labels
    pair_rows = []
    by_splits = Counter()
    for a, b, d, ex, cc in zip(pi, pj, pd, same_bytes, corr):
        a, b = int(a), int(b)
        sa, sb = sorted((str(split_of[a]), str(split_of[b])), key=SPLIT_ORDER.index)
        by_splits[f"{sa}-{sb}"] += 1
        pair_rows.append({"a": rows.row(a), "b": rows.row(b), "distance": int(d),
                          "exact": bool(ex), "correlation": round(float(cc), 4),
                          "cross_split": split_of[a] != split_of[b],
                          "label_conflict": bool(labels[a] != labels[b]), "_rows": (a, b)})
    pair_rows.sort(key=lambda p: (not p["cross_split"], p["distance"], p["_rows"]))
    return pair_rows, by_splits


def _groups(rows: Rows, found: Findings, union: _Union, touched: set[int],
            exact_groups: list[list[int]], hashes: np.ndarray) -> list[dict]:
    """Components of duplicates (exact or near): keep the first in split then file order,
    flag the others."""
    split_of, paths, digests = rows.split_of, rows.paths, rows.digests
    members: dict[int, list[int]] = {}
    for k in touched:
        members.setdefault(union.find(k), []).append(k)
    dup_groups = []
    for ks in members.values():
        ks.sort(key=lambda k: (SPLIT_ORDER.index(split_of[k]), k))
        keep = ks[0]
        exact_of_keep = {k for grp in exact_groups if keep in grp for k in grp}
        for k in ks[1:]:
            kind = "exact-duplicate" if k in exact_of_keep or (
                digests is not None and digests[k] == digests[keep]) else "near-duplicate"
            d = int(popcount(hashes[k:k + 1] ^ hashes[keep:keep + 1])[0])
            where = (f"{split_of[k]} copy of {split_of[keep]} {paths[keep]}"
                     if split_of[k] != split_of[keep] else f"copy of {paths[keep]}")
            found.flag(k, kind, f"{kind.replace('-', ' ')} (pHash d={d}): {where}",
                       of=paths[keep], distance=d, cross_split=split_of[k] != split_of[keep])
        dup_groups.append({"keep": paths[keep], "files": [rows.row(k) for k in ks],
                           "splits": sorted({str(split_of[k]) for k in ks},
                                            key=SPLIT_ORDER.index),
                           "label_conflict": len({int(rows.labels[k]) for k in ks}) > 1})
    dup_groups.sort(key=lambda g: (len(g["splits"]) == 1, -len(g["files"]), g["keep"]))
    return dup_groups
