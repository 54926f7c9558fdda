"""The API's documentation pages: Swagger UI and Redoc, served with their scripts and styles from
an installed package (drf-spectacular-sidecar, which vendors both dists), so the pages work on a
machine without internet and load nothing from a CDN.

The sidecar package depends on Django for its own use inside Django projects; only its static
files are read here (found on disk, the package is never imported).
"""

import importlib.util
from pathlib import Path

from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
)
from litestar.router import Router
from litestar.static_files import create_static_files_router

SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/assets"
_ASSETS_PACKAGE = "drf_spectacular_sidecar"
# No favicon: Litestar's default one is loaded from a CDN.
_NO_FAVICON = "<link rel='icon' href='data:,'>"


def assets_directory() -> Path:
    """Where the installed sidecar package keeps the Swagger UI and Redoc dists."""
    spec = importlib.util.find_spec(_ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"{_ASSETS_PACKAGE} is not installed: install the project (make install)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "static" / _ASSETS_PACKAGE


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """`/schema` and `/schema/swagger` (Swagger UI), `/schema/redoc` and `/schema/openapi.json`,
    every page's assets local."""
    swagger = f"{ASSETS_PATH}/swagger-ui-dist"
    return [
        SwaggerRenderPlugin(
            path=["/", "/swagger"],
            js_url=f"{swagger}/swagger-ui-bundle.js",
            css_url=f"{swagger}/swagger-ui.css",
            standalone_preset_js_url=f"{swagger}/swagger-ui-standalone-preset.js",
            favicon=_NO_FAVICON,
        ),
        RedocRenderPlugin(
            js_url=f"{ASSETS_PATH}/redoc/bundles/redoc.standalone.js",
            google_fonts=False,
            favicon=_NO_FAVICON,
        ),
        JsonRenderPlugin(),
    ]


def assets_router() -> Router:
    """Serves the dists' files under `/schema/assets/` (cached for a day by browsers)."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[assets_directory()],
        cache_control=None,
        include_in_schema=False,
        name="docs-assets",
    )
