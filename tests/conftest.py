"""Shared fixtures. Real third-party data lives beside the repository in ../shared/data and is
never copied in; tests that need it take the ``shared_data`` fixture and skip when it is absent."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"{SHARED_DATA} is absent: the real third-party test files live in ../shared/data "
            "beside the repository (a clone on its own has none)"
        )
    return SHARED_DATA
