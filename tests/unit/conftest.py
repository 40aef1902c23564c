"""Fixtures shared by the unit tests: the tiny DiT with seeded random weights (no tensor zero or one by
construction) and DiT inputs for it, one of each per test module."""

import pytest

from tests.helpers import dit_inputs, randomize_
from wan_train.models import WanDiT, get_size


@pytest.fixture(scope="module")
def model():
    return randomize_(WanDiT(get_size("tiny").dit).eval())


@pytest.fixture(scope="module")
def inputs(model):
    return dit_inputs(model.config)
