import os
import urllib.error
import urllib.request

import pytest
import torch

# The test nets are tiny: one thread per process is as fast as two and does not
# oversubscribe the CPU when a test launches processes of its own.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # @pytest.mark.cuda tests exercise the GPU paths; everywhere else they are skipped, not failed
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Tests stay offline wherever they run: a fetch (the Inception weights) fails as without a network."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("the tests run offline")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def cpu_only(monkeypatch):
    """Train on the CPU in this test even where a GPU exists (ACCELERATE_USE_CPU, which
    arena.trainer.train honours): bit-exact comparisons need deterministic kernels, and
    CUDA's convolution backward is not. accelerate keeps one process state, chosen by the
    first train() of the process, so it is reset before and after."""
    from accelerate import PartialState

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    PartialState._reset_state()
    yield
    PartialState._reset_state()
