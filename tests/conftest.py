"""Shared fixtures."""

import pytest

from helpers import tiny_config


@pytest.fixture
def tiny():
    return tiny_config
