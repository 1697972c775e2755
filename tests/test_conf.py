"""longtask's settings (longtask/conf.py): read once, read again when a setting changes; and
the JSON helpers every subtask goes through (longtask/serialize.py, guards/sizes.py)."""

from __future__ import annotations

import json

from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from longtask.conf import Settings
from longtask.conf import settings as longtask_settings
from longtask.guards import sizes
from longtask.serialize import dumps, to_json


def test_a_setting_is_its_default_until_a_django_setting_names_it():
    assert longtask_settings.SPLIT_BATCH == Settings.SPLIT_BATCH
    with override_settings(LONGTASK_SPLIT_BATCH=7):
        assert longtask_settings.SPLIT_BATCH == 7
        with override_settings(LONGTASK_SPLIT_BATCH=9):
            assert longtask_settings.SPLIT_BATCH == 9
        assert longtask_settings.SPLIT_BATCH == 7
    assert longtask_settings.SPLIT_BATCH == Settings.SPLIT_BATCH


def test_the_pytest_settings_fixture_is_seen_at_once(settings):
    half = longtask_settings.RECORD_INTERVAL / 2  # read, and kept until a change
    settings.LONGTASK_RECORD_INTERVAL = half
    assert half == longtask_settings.RECORD_INTERVAL


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**19), max_value=10**19),
        st.text(),
        st.floats(allow_nan=False),
        st.lists(st.integers(), max_size=3),
    )
)
def test_a_value_is_its_json_round_trip_and_its_size_that_of_its_text(value):
    """serialize.to_json and sizes.json_size skip the round trip for plain values (a
    no-op subtask's None): they must answer what the round trip answers."""
    text = dumps(value)
    expected = json.loads(text)
    assert to_json(value) == expected and type(to_json(value)) is type(expected)
    assert sizes.json_size(value) == len(text)
