"""Test set-up: offline, a private model cache, single-threaded torch (tests run two at a time), and
every test seeded afresh so that none depends on the random state another test left behind (xdist
may put a file on either worker, in any order).

Two environment variables widen what the suite checks without editing it:
- ``RLHFLAB_TEST_SEED`` (default 0): the seed of every test's RNGs and of the training runs whose
  outcome is asserted (they read ``TEST_SEED``), to check that a bar holds across seeds;
- ``RLHFLAB_TEST_THREADS`` (default 1): torch's intra-op threads, which change the order of float
  reductions and so the trajectory of every training run.
(``ATEN_CPU_CAPABILITY=avx2`` or ``default``, read by torch itself, changes the kernels' FP path.)"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests._env import TEST_SEED, TEST_THREADS  # noqa: E402

torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _seed_every_test():
    """The same RNG state at the start of every test, whatever ran before it on this worker."""
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """Tiny models built once per session into a private cache, which subprocesses share.

    Built here, before any subprocess starts, so launched processes only read the cache and every
    run draws a reward model's fresh head from the same RNG state whoever built the cache. (The real
    default models keep the user's cache: converting SmolLM2 takes a minute.)"""
    from rlhflab.models import resolve_model

    cache = tmp_path_factory.getbasetemp() / "rlhflab-cache"
    old = os.environ.get("RLHFLAB_CACHE")
    os.environ["RLHFLAB_CACHE"] = str(cache)
    resolve_model("tiny-policy")
    resolve_model("tiny-reward")
    yield cache
    if old is None:
        os.environ.pop("RLHFLAB_CACHE", None)
    else:
        os.environ["RLHFLAB_CACHE"] = old


@pytest.fixture
def tiny_policy():
    from rlhflab.models.tiny import build_tiny_policy

    return build_tiny_policy(seed=0)


@pytest.fixture
def char_tokenizer():
    from rlhflab.models.tiny import build_char_tokenizer

    return build_char_tokenizer()
