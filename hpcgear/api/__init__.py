"""The HTTP API (``hpcgear serve``): FastAPI over the service layer.

Flywheel-compatible routes (what ``flywheel-sdk`` calls) live in ``flywheel.py``;
hpcgear's own (the CLI as a client, sites) in ``native.py``; identity and the scope
of job keys in ``access.py``. ``cliplan.py`` (where each CLI command runs in client
mode) and ``transfers.py`` (the files a forwarded command moves) import no FastAPI:
the CLI uses them as a client. The other modules import FastAPI, so the CLI imports
them only inside ``hpcgear serve``.
"""
