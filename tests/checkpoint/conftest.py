"""The multi-process test's job environment is the runtime tests' (tests/runtime/conftest.py)."""

from tests.runtime.conftest import job_env  # noqa: F401 - a fixture
