"""The operator console: a single-page app of static files (no build step) under `/console`,
served with headers that keep its pages from being framed or fed foreign scripts. The app holds
its workspace key in the tab's sessionStorage and calls the JSON API with it; the server never
sees the key except as the `Authorization` header of those API calls."""

from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.response import Redirect
from litestar.router import Router
from litestar.static_files import create_static_files_router

CONSOLE_PATH = "/console"
DIRECTORY = Path(__file__).with_name("console")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
"""Only the console's own files run: no inline script, nothing from another origin."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def console_router() -> Router:
    """`/console/` (index.html) and its scripts and styles, revalidated on every load so a new
    version of the files is picked up at once."""
    return create_static_files_router(
        path=CONSOLE_PATH,
        directories=[DIRECTORY],
        html_mode=True,
        include_in_schema=False,
        name="console",
        cache_control=CacheControlHeader(no_cache=True),
        after_request=with_security_headers,
    )


async def with_security_headers(response: Response) -> Response:  # type: ignore[type-arg]
    response.headers.update(SECURITY_HEADERS)
    return response


@get("/", include_in_schema=False, sync_to_thread=False, name="home")
def home() -> Response[None]:
    """The root opens the console."""
    return Redirect(f"{CONSOLE_PATH}/", status_code=302)


ROUTES = [console_router(), home]
