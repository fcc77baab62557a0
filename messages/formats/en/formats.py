"""Dates and times as operators read them: runs happen every few minutes, so every time shows
to the second, with its zone (TIME_ZONE) rather than Django's "Dec. 2, 2026, 6 a.m."."""

DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s T"
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
