"""`python -m dsv`: the command line, as the `dsv` script runs it."""

from .cli import main

main()
