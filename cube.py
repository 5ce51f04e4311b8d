#!/usr/bin/env python3
"""Cube's entry point from a source checkout: `python3 cube.py worker ...` is `cube.pyz worker ...`.
(The package directory `cube/` wins the import of `cube`, so this script only forwards to `cube.cli.main:main`.)"""

import sys

from cube.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
