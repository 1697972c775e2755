"""Test kinds for worker processes started with LONGTASK_TEST_APP=1 (see tests/settings.py)."""

from longtask.kinds import registry
from tests import kinds

registry.register(kinds.TimeLimited)
registry.register(kinds.Framed)  # daphne serves its page in tests/test_browser.py
