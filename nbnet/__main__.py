"""`python -m nbnet` is the `nbnet` command."""

from .cli import main

main()
