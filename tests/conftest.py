import pytest

from tests.helpers import SHARED


@pytest.fixture
def shared_dir():
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing; the tests need the shared reference data beside the repository")
    return SHARED
