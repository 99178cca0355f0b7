"""The HTTP API (``hpcgear serve``): FastAPI over the service layer.

Flywheel-compatible routes (what ``flywheel-sdk`` calls) live in ``flywheel.py``;
hpcgear's own (the CLI as a client, sites) in ``native.py``, with the table of where
each CLI command runs in client mode in ``cliplan.py`` and the files it moves in
``transfers.py``; identity and the
scope of job keys in ``access.py``. Importing this package imports FastAPI, so
the CLI imports it only inside ``hpcgear serve``.
"""
