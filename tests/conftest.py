"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest
import torch

from nanoseek.data.tasks import get_task
from nanoseek.tokenizer import train_tokenizer


@pytest.fixture
def one_thread():
    """The test models are tiny: OpenMP threads only add overhead (and stall on a busy box).
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def arithmetic_tokenizer(tmp_path_factory):
    """A 320-token BPE trained on 40 arithmetic problems with worked solutions."""
    corpus = tmp_path_factory.mktemp("corpus")
    problems = get_task("arithmetic")(40, seed=1, split="train")
    (corpus / "c.txt").write_text("\n\n".join(p.text() for p in problems))
    return train_tokenizer([corpus], vocab_size=320)
