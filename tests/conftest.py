import os

import pytest
import torch

from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Without a GPU, the Triton backend's kernels run on CPU tensors under Triton's interpreter
# (tests/backends/test_triton.py). Triton reads this when it decorates the kernels, at the
# backend's first use, so it is set here, before anything is collected or run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
