"""Async tests run on aemu's virtual-time loop: deterministic, and as fast as the host allows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from aemu.clock import VirtualTimeLoop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], Any]]:
    return {"virtual": VirtualTimeLoop}
