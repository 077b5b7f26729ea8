"""The `imgvec` command: its parser, its commands, and the text they print."""

from imgvec.cli.main import entry, main  # noqa: F401  (the `imgvec` script; tests call main)
