"""``hpcgear serve``: the HTTP API (FastAPI + uvicorn), imported only when it runs."""

from __future__ import annotations

import logging
import sys

import click

from hpcgear.cli.context import AppContext

pass_app = click.make_pass_decorator(AppContext)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--max-body-mb",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Largest JSON/form request body; file uploads stream and may be larger.",
)
@click.option(
    "--max-upload-gb",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Largest single file upload.",
)
@click.option("--workers-threads", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Threads serving blocking requests (database, storage).")
@pass_app
def serve_cmd(
    app: AppContext,
    host: str,
    port: int,
    max_body_mb: int,
    max_upload_gb: int,
    workers_threads: int,
) -> None:
    """Serve the HTTP API: the Flywheel-compatible REST subset under /api, hpcgear's own
    endpoints under /api/hpcgear, OpenAPI docs at /docs. Site admins only.

    Researchers use it with keys from `hpcgear user key create` (flywheel-sdk or
    `hpcgear login KEY`); gears reach it from compute nodes at the site's api_url.
    """
    app.require_site_admin("serving the HTTP API")
    from hpcgear.cli.startup import restore_collection

    restore_collection()  # a server runs for days: CPython's default collector thresholds
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    from hpcgear.api.app import ApiLimits, create_app
    from hpcgear.api.server import run_server
    from hpcgear.cli.remote import run_cli

    api = create_app(
        app.settings,
        db=app.db,
        store=app.store,
        limits=ApiLimits(max_body=max_body_mb << 20, max_upload=max_upload_gb << 30),
        cli_runner=run_cli,
    )
    app.note(f"hpcgear API on http://{host}:{port}/api (docs: http://{host}:{port}/docs)")
    run_server(api, host=host, port=port, threads=workers_threads)
