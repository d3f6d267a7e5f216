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
