"""The ``fake_nanogpt`` fixture: a started :class:`tests.fakes.nanogpt.FakeNanoGPT`, closed after the test.

Register with ``pytest_plugins = ["tests.fixtures_nanogpt"]``. At teardown it asserts that every
request matched NanoGPT's OpenAPI (``schema_violations``) and that no storage download carried
credentials (``credential_leaks``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.nanogpt import FakeNanoGPT


@pytest.fixture
async def fake_nanogpt() -> AsyncIterator[FakeNanoGPT]:
    fake = FakeNanoGPT()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
    assert not fake.schema_violations, f"requests that break NanoGPT's OpenAPI: {fake.schema_violations}"
    assert not fake.credential_leaks, f"storage downloads that carried credentials: {fake.credential_leaks}"
