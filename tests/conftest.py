"""Shared test settings: small thread counts keep 2-core CI machines responsive."""
import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def fashion_root():
    if not os.path.exists(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz")):
        pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist (CI installs it)")
    return FASHION_MNIST
