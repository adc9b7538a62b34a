"""Test set-up: offline, a private model cache, single-threaded torch (tests run two at a time)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    # The real default models are large; keep the user's cache if it exists (tests only read it),
    # otherwise build into the default location so later runs reuse it.
    yield


@pytest.fixture
def tiny_policy():
    from rlhflab.models.tiny import build_tiny_policy

    return build_tiny_policy(seed=0)


@pytest.fixture
def char_tokenizer():
    from rlhflab.models.tiny import build_char_tokenizer

    return build_char_tokenizer()
