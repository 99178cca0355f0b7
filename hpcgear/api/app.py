"""The FastAPI application: settings, errors as JSON, body limits, the caller dependency."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from hpcgear import __version__, errors
from hpcgear.api.access import Caller, caller_from_header
from hpcgear.api.transfers import TooManyStagedError

if TYPE_CHECKING:
    from hpcgear.api.transfers import Transfers
    from hpcgear.config.settings import Settings
    from hpcgear.db.session import Database
    from hpcgear.jobs.sites import SiteRegistry
    from hpcgear.storage.objects import ObjectStore

logger = logging.getLogger(__name__)

#: (settings, db, store, login, argv, files) -> {code, stdout, stderr}; ``files`` maps the
#: placeholders in argv to the paths the server staged (hpcgear/api/transfers.py).
CliRunner = Callable[
    ["Settings", "Database", "ObjectStore", str, list[str], dict[str, str]], dict[str, Any]
]


@dataclass(frozen=True, slots=True)
class ApiLimits:
    max_body: int = 64 << 20  # JSON and form bodies
    max_upload: int = 100 << 30  # one streamed file upload


@dataclass
class ApiState:
    settings: Settings
    db: Database
    store: ObjectStore
    limits: ApiLimits
    # Runs one CLI command as a user (hpcgear.cli.remote.run_cli), injected by the CLI's
    # `serve` so this package never imports the CLI layer above it.
    cli_runner: CliRunner | None = None
    _sites: SiteRegistry | None = field(default=None)
    _transfers: Transfers | None = field(default=None)

    @property
    def transfers(self) -> Transfers:
        """Staged inputs and outputs of forwarded CLI commands (under the store's tmp)."""
        if self._transfers is None:
            from hpcgear.api.transfers import Transfers

            self._transfers = Transfers(self.store.tmp / "api-transfers")
        return self._transfers

    @property
    def sites(self) -> SiteRegistry:
        if self._sites is None:
            from hpcgear.jobs.sites import SiteRegistry

            self._sites = SiteRegistry.from_settings(self.settings)
        return self._sites

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.db.session() as s:
            yield s


class BodyTooLargeError(errors.InvalidInputError):
    """A request body over the server's cap (413)."""


_STATUS: tuple[tuple[type[errors.HpcgearError], int], ...] = (
    (BodyTooLargeError, 413),
    (TooManyStagedError, 429),
    (errors.AuthenticationError, 401),
    (errors.PermissionDeniedError, 403),
    (errors.NotFoundError, 404),
    (errors.AlreadyExistsError, 409),
    (errors.StateTransitionError, 409),
    (errors.InvalidInputError, 422),
    (errors.ConfigError, 422),
    (errors.DatabaseError, 503),
)


def status_for(exc: errors.HpcgearError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(status: int, message: str, hint: str = "") -> dict[str, Any]:
    return {"status": status, "message": message, "hint": hint}


def state(request: Request) -> ApiState:
    st = request.app.state.hpcgear
    assert isinstance(st, ApiState)
    return st


def current_caller(request: Request) -> Caller:
    st = state(request)
    with st.session() as s:
        return caller_from_header(s, request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(current_caller)]
StateDep = Annotated[ApiState, Depends(state)]

F = TypeVar("F", bound=Callable[..., Any])


def retried(fn: F) -> F:
    """A write handler whose every call is one transaction of its own: a call that
    raced another writer (a unique violation, a PostgreSQL deadlock or serialization
    failure, SQLite busy past its timeout) is run again as a whole
    (:func:`hpcgear.db.session.retry_conflicts`), so no client sees the race."""
    import functools
    import inspect

    from hpcgear.db.session import retry_conflicts

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return retry_conflicts(lambda: fn(*args, **kwargs))

    # FastAPI reads the parameters from the signature: resolve the handler's string
    # annotations (``from __future__ import annotations``) in its own module.
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


class _BodyLimit:
    """Bounds request bodies: JSON and forms by ``max_body``, file uploads by ``max_upload``.

    A declared Content-Length over the cap is answered at once; a chunked body is
    counted while the endpoint reads it, and the read that crosses the cap raises
    ``BodyTooLargeError`` (a JSON 413). A plain ASGI middleware, so that error
    reaches the app's exception handlers (not a task group's).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        st: ApiState = scope["app"].state.hpcgear
        path = scope.get("path", "")
        is_upload = scope.get("method") == "POST" and (
            path.endswith("/files") or path in ("/api/hpcgear/upload", "/api/hpcgear/stage")
        )
        cap = st.limits.max_upload if is_upload else st.limits.max_body
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > cap
            except ValueError:
                too_big = True
            if too_big:
                response = JSONResponse(
                    error_body(413, f"request body larger than {cap} bytes", "send less"),
                    status_code=413,
                )
                await response(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counting() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLargeError(f"request body larger than {cap} bytes", "send less")
            return message

        await self.app(scope, counting, send)


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    store: ObjectStore | None = None,
    limits: ApiLimits | None = None,
    cli_runner: CliRunner | None = None,
) -> FastAPI:
    """The API over an instance (its database and storage)."""
    if db is None:
        from hpcgear.db.session import Database

        db = Database.open(settings.database_url)
    if store is None:
        from hpcgear.storage.objects import ObjectStore

        store = ObjectStore(settings.storage_root)
    app = FastAPI(
        title="hpcgear",
        version=__version__,
        description="Flywheel-compatible REST API of an hpcgear instance "
        "(Authorization: scitran-user <key>).",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.hpcgear = ApiState(settings, db, store, limits or ApiLimits(), cli_runner)

    @app.exception_handler(errors.HpcgearError)
    async def _hpcgear_error(request: Request, exc: errors.HpcgearError) -> JSONResponse:
        status = status_for(exc)
        if status == 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(error_body(status, exc.message, exc.hint), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg')}")
        return JSONResponse(
            error_body(422, "invalid request: " + "; ".join(parts), "see /docs for the shape"),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail), "see /docs"), status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error in %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(500, f"internal error: {type(exc).__name__}", "this is a bug in hpcgear"),
            status_code=500,
        )

    app.add_middleware(_BodyLimit)

    from hpcgear.api import flywheel, metrics, native

    app.include_router(metrics.router)  # GET /metrics (Prometheus)
    app.include_router(native.router, prefix="/api/hpcgear")
    app.include_router(flywheel.router, prefix="/api")
    app.include_router(flywheel.generic, prefix="/api")
    return app


__all__ = ["ApiLimits", "ApiState", "CallerDep", "StateDep", "create_app", "error_body"]
