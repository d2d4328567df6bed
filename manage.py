#!/usr/bin/env python
"""Django's command-line utility for the ops portal."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from django.core.management import execute_from_command_line

    from portal.lib.text import find_unstorable

    # Every management command's arguments, checked once: bytes that are not UTF-8
    # arrive as lone surrogates, which no database column can store.
    bad = find_unstorable(sys.argv)
    if bad is not None:
        index = int(bad.strip("[]"))
        print(
            f"error: argument {index} contains a character that cannot be stored "
            "(bytes that are not valid UTF-8)",
            file=sys.stderr,
        )
        sys.exit(2)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
