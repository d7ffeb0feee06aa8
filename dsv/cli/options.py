"""Options that several commands share, declared once so they read and behave the same."""

from __future__ import annotations

import typer

from . import complete

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
DatasetOpt = typer.Option(None, "-d", "--dataset", help="Dataset id or name "
                          "(default: the dataset of the current directory).",
                          autocompletion=complete.datasets)
