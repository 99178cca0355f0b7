"""``python -m hpcgear`` runs the CLI."""

from hpcgear.cli.main import main

main()
