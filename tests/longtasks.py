"""Test kinds for worker processes started with LONGTASK_TEST_APP=1 (see tests/settings.py)."""

from longtask.kinds import registry
from tests import kinds

registry.register(kinds.TimeLimited)
