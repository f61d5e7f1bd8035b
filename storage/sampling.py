"""Deterministic sampling by review id: the same answer in every process and on every replay.

A review is in a sample of ``share`` when the first 8 bytes of the BLAKE2b digest of its id, read as a
fraction of 2**64, fall below the share. Workers agree without talking to each other, a replayed batch
samples exactly the reviews it sampled the first time, and a larger share samples a superset of a smaller
one. Shadow evaluation (which reviews the candidate labels) and refresh (which corrections are held out)
both sample this way.
"""

from __future__ import annotations

import hashlib


def in_sample(review_id: str, share: float) -> bool:
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(review_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64
