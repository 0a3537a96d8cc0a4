"""Which items ``eval.limit`` N evaluates: a seeded random sample (``eval.subset: random``, the default) or
lm-eval's first N (``eval.subset: first``). Pure Python (no torch, no lm-eval).

Random: every document of a split gets a rank from a hash of (``eval.subset_seed``, the data's key, its
index): blake2b, so the ranks are the same on every machine and Python version. A sample of k documents
is the k of lowest rank, returned in index order. Hence the same seed and N give the same items in every
run (every run of a sweep evaluates the same items), and a sample of 100 is contained in the sample of
200. The key is the data, not the prompt: for MMLU the subject, so ``mmlu`` and ``mmlu_continuation``
draw the same questions.

MMLU (a group of subjects) is stratified: N items in total, allocated to the subjects in proportion to
their sizes by the largest-remainder method (ties: alphabetical order), every subject getting at least
one item when N >= the number of subjects (:func:`allocate`).

Item ids (the record's ``item_ids``): a plain task's document indices; a group's ``subject:index``.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

MODES = ("random", "first")


def rank(seed: int, key: str, index: int) -> int:
    """The deterministic rank of one document in the sample order."""
    h = hashlib.blake2b(f"{int(seed)}:{key}:{int(index)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def sample(n_docs: int, k: int, seed: int, key: str) -> list[int]:
    """``k`` of ``range(n_docs)`` (all of them when k >= n_docs), sorted."""
    if k >= n_docs:
        return list(range(n_docs))
    order = sorted(range(n_docs), key=lambda i: rank(seed, key, i))
    return sorted(order[:k])


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (non-negative, sum >= total): floors, then one more
    for the largest fractional parts, ties to the earlier part. Exact integer arithmetic; each part is at
    most its weight."""
    w_sum = sum(weights)
    if total <= 0 or w_sum == 0:
        return [0] * len(weights)
    floors = [total * w // w_sum for w in weights]
    rems = [total * w - f * w_sum for w, f in zip(weights, floors)]   # fractional parts times w_sum
    left = total - sum(floors)
    for i in sorted(range(len(weights)), key=lambda i: (-rems[i], i))[:left]:
        floors[i] += 1
    return floors


def allocate(total: int, sizes: Sequence[int]) -> list[int]:
    """Items per part (subject) for a stratified sample of ``total`` items: proportional to ``sizes``,
    at least one per non-empty part when ``total`` >= the number of parts, never more than a part has."""
    if total >= sum(sizes):
        return list(sizes)
    nonempty = [s > 0 for s in sizes]
    if total >= sum(nonempty):
        base = [1 if ne else 0 for ne in nonempty]
        extra = largest_remainder(total - sum(base), [max(s - 1, 0) for s in sizes])
        return [b + e for b, e in zip(base, extra)]
    return largest_remainder(total, sizes)


def draw(sizes: Mapping[str, int], limit: int | None, seed: int, mode: str = "random",
         spread=None) -> dict[str, list[int]]:
    """``{part: sorted doc indices}`` for ``limit`` items over the parts (one part: a plain task; several:
    a group's subjects, stratified). ``mode`` first: the first k of each part, k from ``spread`` (lm-eval's
    behaviour, ``lmeval.spread``) or all ``limit`` of a single part. Parts that get no item are left out."""
    if mode not in MODES:
        raise ValueError(f"eval.subset: {mode!r} is not one of {', '.join(MODES)}")
    names = list(sizes)
    if limit is None:
        return {p: list(range(sizes[p])) for p in names}
    if mode == "first":
        counts = spread(limit, [sizes[p] for p in names]) if spread and len(names) > 1 else \
            [min(limit, sizes[p]) for p in names]
        return {p: list(range(k)) for p, k in zip(names, counts) if k > 0}
    counts = allocate(limit, [sizes[p] for p in names]) if len(names) > 1 else [min(limit, sizes[names[0]])]
    return {p: sample(sizes[p], k, seed, p) for p, k in zip(names, counts) if k > 0}


def item_ids(picked: Mapping[str, list[int]], grouped: bool) -> list:
    """The record's ``item_ids``: doc indices (a plain task) or ``subject:index`` (a group)."""
    if not grouped:
        return [i for ids in picked.values() for i in ids]
    return [f"{p}:{i}" for p, ids in picked.items() for i in ids]


def digest(ids) -> str:
    """A short fingerprint of a list of item ids (compared across runs)."""
    return hashlib.blake2b(",".join(map(str, ids)).encode(), digest_size=8).hexdigest()
