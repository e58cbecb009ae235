import os

import pytest

# Tests run on 2 CPU cores with loader workers and DDP subprocesses beside pytest: one intra-op thread per
# process avoids oversubscription (measured 15x slower training steps with 2 threads on a busy machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def binary_kernels():
    """The binary-kernel extension, loaded once per session: the first use in a fresh cache compiles it (the
    only test that pays for the build); later tests and later sessions reuse the cached library."""
    from hubert_lit.quant.binary_kernels import extension

    return extension.load()
