"""Shared fixtures: one tokenizer and one tiny random model per test session.

Gemma-3's tokenizer (262k tokens) takes ~30 s to convert from its GGUF the first time (the `gguf`
package reads its vocabulary in pure Python). When tests need it, its conversion starts in a
background process as soon as the tests are collected and those tests run last, so it happens on
the second core while the others run; `models.prepare_tokenizer` holds a file lock, so the tests
then find it done.
"""
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

GEMMA_FIXTURES = {"gemma_tokenizer", "gemma_teacher_dir"}
_background: list[subprocess.Popen] = []


def pytest_collection_modifyitems(session, config, items):
    needs_gemma = [item for item in items if GEMMA_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if needs_gemma:
        items[:] = [item for item in items if item not in needs_gemma] + needs_gemma
        code = "from autothink.models import prepare_tokenizer; prepare_tokenizer('gemma-3-270m')"
        _background.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))


def pytest_sessionfinish(session, exitstatus):
    for proc in _background:
        proc.kill()  # only still running if no test ended up needing it; its writes are atomic
        proc.wait()


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
