"""core/run_endings.py: each error code a run ends with is explained in the operator's words,
with the setting it names filled in; a run without an error code needs no explanation."""

import pytest

from core.entitlements.runs import CONFIGURATION_ERROR, FAN_OUT_INTERRUPTED, INCOMPLETE
from core.run_endings import RUN_ENDINGS, why_run_ended


@pytest.mark.parametrize(
    "code", [CONFIGURATION_ERROR, INCOMPLETE, "fanout_failed", FAN_OUT_INTERRUPTED]
)
def test_the_codes_a_run_ends_with_are_explained(code):
    assert code in RUN_ENDINGS
    assert why_run_ended(error_code=code)


def test_a_lost_run_says_how_long_it_stayed_silent(settings):
    settings.ENTITLEMENTS_RUN_STALL_SECONDS = 321

    assert "No batch of this run reported for 321 s" in why_run_ended(error_code=INCOMPLETE)


def test_no_error_code_no_explanation():
    assert why_run_ended(error_code="") == ""
    assert why_run_ended(error_code="something_else") == ""
