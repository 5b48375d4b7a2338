"""Deterministic train/eval split by example hash, and the weighted multi-source mix.

The split ranks *distinct* example hashes by ``sha256(seed:hash)`` and sends the first ones to
eval until the requested size is reached. Identical examples share a hash and so always land on
the same side: an eval example can never also be a train example, with or without dedup.

The mix gives each source ``round(weight × n)`` examples: a weight below 1 samples without
replacement, above 1 repeats the source whole ``floor(weight)`` times plus a sample of the rest.
It runs on the train side only (after the split), so repeats never leak into eval.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from expertkit.errors import DataError


def eval_count(eval_size: float, total: int) -> int:
    count = round(eval_size * total) if eval_size < 1 else int(eval_size)
    if count >= total:
        raise DataError(
            f"training.dataset.split.eval_size {eval_size} asks for {count} eval examples of {total}",
            "lower eval_size so at least one example is left to train on",
        )
    return max(count, 1) if total > 1 else 0


def hash_split(hashes: Sequence[str], eval_size: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, eval indices), each in the original order."""
    wanted = eval_count(eval_size, len(hashes))
    ranked = sorted(set(hashes), key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    by_hash: dict[str, int] = {}
    for digest in hashes:
        by_hash[digest] = by_hash.get(digest, 0) + 1
    chosen: set[str] = set()
    taken = 0
    for digest in ranked:
        if taken >= wanted:
            break
        chosen.add(digest)
        taken += by_hash[digest]
    train = [i for i, h in enumerate(hashes) if h not in chosen]
    evaluation = [i for i, h in enumerate(hashes) if h in chosen]
    return train, evaluation


MAX_SHARES = 0.5  # of a mix, all shares together (validate says so first)


def weighted_mix(
    groups: dict[str, list[int]], weights: dict[str, float], seed: int, shares: dict[str, float] | None = None
) -> tuple[list[int], dict[str, int]]:
    """Indices of the mixed, shuffled train set and how many each source contributed: a weighted source
    gives ``weight`` × its size; a source with a ``share`` makes up that fraction of the whole mix."""
    rng = random.Random(seed)
    mixed: list[int] = []
    counts: dict[str, int] = {}
    shares = shares or {}
    for name, indices in groups.items():
        if not indices:
            raise DataError(f"dataset source {name!r} has no usable training examples", "fix or remove the source")
    weighted = [name for name in groups if name not in shares]
    if shares and not weighted:
        raise DataError(
            f"every source of this mix has a share ({', '.join(shares)}): a share is a fraction of the others",
            "give at least one source of the mix a weight instead of a share",
        )
    if sum(shares.values()) > MAX_SHARES:
        raise DataError(f"the shares of this mix add up to {sum(shares.values()):g}", f"keep them <= {MAX_SHARES}")
    for name in weighted:
        counts[name] = _draw(groups[name], weights[name] * len(groups[name]), rng, mixed)
    rest, total = len(mixed), sum(shares.values())
    for name, share in shares.items():
        counts[name] = _draw(groups[name], share / (1 - total) * rest, rng, mixed)
    rng.shuffle(mixed)
    return mixed, counts


def _draw(indices: list[int], count: float, rng: random.Random, into: list[int]) -> int:
    """``count`` of ``indices`` (at least one): whole repeats, then a seeded sample of the rest."""
    whole, rest = divmod(max(1, round(count)), len(indices))
    chosen = indices * whole + rng.sample(indices, rest)
    into.extend(chosen)
    return len(chosen)
