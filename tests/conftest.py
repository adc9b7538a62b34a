"""Test set-up: offline, a private model cache, single-threaded torch (tests run two at a time)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


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
