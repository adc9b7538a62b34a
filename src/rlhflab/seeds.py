"""Seeds of a run's independent random streams, all derived from the run's one ``--seed``."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, stream: str, i: int = 0) -> int:
    """The seed of draw ``i`` of the random stream named ``stream`` in a run seeded ``seed``.

    Each stream (the prompts of a PPO iteration, the minibatch order of its updates, the examples of
    an offline epoch, a RAFT round's prompts and samples) gets its own generator, so any draw is
    known without replaying the ones before it (exact resume) and no two draws share a seed: a hash
    of (seed, stream, i), where arithmetic like ``seed * K + i`` makes run ``seed`` meet run
    ``seed + 1`` once ``i`` reaches ``K``. The result is below 2**63, a valid torch and numpy seed.
    """
    digest = hashlib.blake2b(f"{seed}/{stream}/{i}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
