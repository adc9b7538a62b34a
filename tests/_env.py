"""What the environment may change about a test run (see conftest.py)."""

import os

# The seed of every test's RNGs and of the training runs whose outcome a test asserts.
TEST_SEED = int(os.environ.get("RLHFLAB_TEST_SEED", "0"))
# torch's intra-op threads: 1 by default, since tests run two at a time on two cores.
TEST_THREADS = int(os.environ.get("RLHFLAB_TEST_THREADS", "1"))
