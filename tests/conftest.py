"""aemu's own async tests run in virtual time through aemu's pytest plugin (``aemu_virtual_time =
true`` in pyproject.toml): deterministic, and as fast as the host allows."""

pytest_plugins = ["pytester"]
