"""The default toy-lab instance (16 contexts × 85 outputs, π_ref pre-trained), built once per worker."""

import pytest
import torch

from rlhflab.toy.experiments.common import lab_instance


@pytest.fixture(scope="session")
def default_lab():
    torch.set_num_threads(1)
    return lab_instance(0)
