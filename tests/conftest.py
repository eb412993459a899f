import logging

import pytest

from tests.helpers import SHARED


@pytest.fixture(autouse=True)
def _reset_logging():
    """Keep log records of one test from leaking handlers into the next."""
    yield
    logging.getLogger().handlers.clear()


@pytest.fixture
def shared_dir():
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing; the tests need the shared reference data beside the repository")
    return SHARED
