"""``python -m examples.demo``: see examples/demo/cli.py."""

from .cli import main

main()
