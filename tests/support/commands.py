"""Running a management command as a test does."""

import io

from django.core.management import call_command


def run(*args) -> tuple[str, str]:
    """Call the command; return what it printed on stdout and on stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()
