#!/usr/bin/env python
"""Django's command-line utility."""

import os
import sys
from pathlib import Path


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messages.settings")
    from messages.env import fill_from_demo_env

    # Beside `make run`, a command sees the demo's settings (its backend and mapping file).
    demo_env = fill_from_demo_env(base_dir=Path(__file__).resolve().parent)
    if demo_env:
        print(
            f"Using the demo's settings from {demo_env} (set DATABASE_URL, or the variables "
            "themselves, to use another configuration).",
            file=sys.stderr,
        )
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
