"""Shared fixtures: one tokenizer and one tiny random model per test session."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


@pytest.fixture(scope="session")
def tokenizer():
    from autothink.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """(model, tokenizer): a 2-layer random Llama with the embedded model's real tokenizer."""
    import copy

    from autothink.models import tiny_model

    return tiny_model(copy.deepcopy(tokenizer))


@pytest.fixture(scope="module")
def one_torch_thread():
    """A tiny model runs faster on one thread (and does not fight other processes for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
