"""The ``mechunlearn`` command. Each sub-module adds its commands to ``app``; they stay thin:
parse arguments, call the library, print."""

from mechunlearn.cli.app import app, main

__all__ = ["app", "main"]
