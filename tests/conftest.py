import os
import signal

import numpy as np
import pytest

from datasets.utils.idx import MNIST_FILES, write_idx
from utils.args import parse_args


@pytest.fixture(scope="session", autouse=True)
def sigint_reaches_children():
    """Tests interrupt runs with SIGINT (Ctrl-C).  A shell starts a background job with SIGINT ignored, and
    an ignored signal stays ignored in every child, where Python then installs no KeyboardInterrupt:
    give this process a handler, so the processes the tests start get SIGINT's default back."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test's networks are tiny: one torch thread is faster, and far faster when other
    processes share the (two) cores, as in CI."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_args():
    """parse_args on a list of flags (CPU by default)."""
    def make(*flags):
        flags = list(flags)
        if "--device" not in flags:
            flags += ["--device", "cpu"]
        return parse_args(flags)
    return make


def write_mnist(root, n_train=200, n_test=100, gz=False, seed=0):
    """Tiny MNIST in torchvision's layout: learnable class templates plus noise."""
    rng = np.random.RandomState(seed)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    templates = rng.randint(0, 256, size=(10, 28, 28))
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = np.clip(templates[labels] + rng.randint(-40, 41, size=(n, 28, 28)), 0, 255)
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(raw, MNIST_FILES[split][0] + suffix), images.astype(np.uint8))
        write_idx(os.path.join(raw, MNIST_FILES[split][1] + suffix), labels.astype(np.uint8))
    return raw


@pytest.fixture
def mnist_dir(tmp_path):
    write_mnist(str(tmp_path))
    return str(tmp_path)
