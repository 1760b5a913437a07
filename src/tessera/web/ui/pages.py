"""The web pages: ``/``, ``/view/{id}``, ``/upload``, ``/v/{link}``, ``/dashboard`` and their files
under ``/ui/``.

Each page is the same small HTML shell (``pages/layout.html``) around the page's own markup, and
its script does the rest through the JSON API: nothing from the request is ever written into the
HTML, so a name in a listing or a link can only reach the page as text. The pages are not part of
the API (left out of ``/openapi.json``). A strict Content-Security-Policy allows only our own scripts.
"""

from __future__ import annotations

import mimetypes
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).parent
STATIC = HERE / "static"

SECURITY = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

#: Page name -> (title, script)
PAGES = {
    "home": ("Browse", "home.js"),
    "view": ("Viewer", "viewer.js"),
    "upload": ("Upload", "upload.js"),
    "image": ("Image", "image.js"),
    "dashboard": ("Dashboard", "dashboard.js"),
}


@cache
def render(page: str) -> str:
    """The page's HTML: the layout with the page's title, markup and scripts (our files only)."""
    title, script = PAGES[page]
    vendor = {
        "view": ['<script src="/ui/vendor/openseadragon.min.js"></script>'],
        "upload": ['<script src="/ui/vendor/tus.min.js"></script>'],
        "dashboard": [
            '<link rel="stylesheet" href="/ui/vendor/uPlot.min.css">',
            '<script src="/ui/vendor/uPlot.iife.min.js"></script>',
        ],
    }.get(page, [])
    scripts = [*vendor, '<script src="/ui/common.js"></script>', f'<script src="/ui/{script}"></script>']
    layout = (HERE / "pages" / "layout.html").read_text()
    return (
        layout.replace("{title}", title)
        .replace("{page}", page)
        .replace("{scripts}", "\n".join(scripts))
        .replace("{main}", (HERE / "pages" / f"{page}.html").read_text())
    )


def _page(page: str) -> HTMLResponse:
    return HTMLResponse(render(page), headers=SECURITY)


@router.get("/")
async def home() -> HTMLResponse:
    return _page("home")


@router.get("/view/{identifier:path}")
async def view(identifier: str) -> HTMLResponse:
    return _page("view")


@router.get("/upload")
async def upload() -> HTMLResponse:
    return _page("upload")


@router.get("/v/{link}")
async def image(link: str) -> HTMLResponse:
    return _page("image")


@router.get("/dashboard")
async def dashboard() -> HTMLResponse:
    return _page("dashboard")


@cache
def static_files() -> dict[str, Path]:
    """Every file the pages may load, by its URL name (``common.js``, ``vendor/tus.min.js``): the only
    paths ``/ui/`` answers, so no request can name anything else."""
    return {
        path.relative_to(STATIC).as_posix(): path
        for path in STATIC.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    }


@router.get("/ui/{name:path}")
async def static(name: str) -> FileResponse:
    path = static_files().get(name)
    if path is None:
        hint = " (scripts/setup installs the pages' libraries)" if name.startswith("vendor/") else ""
        raise HTTPException(404, f"no file {name[:100]!r}{hint}")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})
