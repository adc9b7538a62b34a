"""Test set-up: offline, a private model cache, single-threaded torch (tests run two at a time), and
every test seeded afresh so that none depends on the random state another test left behind (xdist
may put a file on either worker, in any order).

Two environment variables widen what the suite checks without editing it:
- ``RLHFLAB_TEST_SEED`` (default 0): the seed of every test's RNGs and of the training runs whose
  outcome is asserted (they read ``TEST_SEED``), to check that a bar holds across seeds;
- ``RLHFLAB_TEST_THREADS`` (default 1): torch's intra-op threads, which change the order of float
  reductions and so the trajectory of every training run.
(``ATEN_CPU_CAPABILITY=avx2`` or ``default``, read by torch itself, changes the kernels' FP path.)
With ``RLHFLAB_TEST_MARGINS=FILE``, every bar a training test checks appends its margin to FILE."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json  # noqa: E402
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


@pytest.fixture
def record_margin(request):
    """``record_margin(what, value, bar, above=True)``: note how far a trained outcome is from the bar
    the test then asserts (value − bar, or bar − value for an upper bar). A no-op unless
    RLHFLAB_TEST_MARGINS names a file, where one JSON line per call goes: sweeping seeds, threads and
    CPU paths then shows how much room each bar leaves."""
    path = os.environ.get("RLHFLAB_TEST_MARGINS")

    def record(what: str, value: float, bar: float, above: bool = True) -> None:
        if path:
            row = {
                "test": request.node.nodeid,
                "what": what,
                "value": float(value),
                "bar": float(bar),
                "margin": float(value) - float(bar) if above else float(bar) - float(value),
                "seed": TEST_SEED,
                "threads": TEST_THREADS,
                "cpu": os.environ.get("ATEN_CPU_CAPABILITY", "native"),
            }
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    return record


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
