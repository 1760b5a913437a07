"""The OpenAPI document: FastAPI's, with the errors as the application really sends them, plus the IIIF
and thumbnail routes, which a plain ASGI layer serves (``web.iiif``) and FastAPI therefore never sees.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tessera.web.errors import ErrorBody
from tessera.web.limits import ALWAYS_ANSWERED

_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status answered with the JSON error body."""
    return {status: {"model": ErrorBody, "description": HTTPStatus(status).phrase} for status in statuses}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) return :func:`build_openapi`'s document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the schema


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = ErrorBody.model_json_schema()
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            _errors_as_sent(
                operation["responses"], busy=path not in ALWAYS_ANSWERED, body="requestBody" in operation
            )
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shapes, never sent here
        schema["components"]["schemas"].pop(name, None)
    schema["paths"].update(_image_paths())
    return schema


def _errors_as_sent(responses: dict[str, Any], *, busy: bool, body: bool) -> None:
    """Invalid parameters or bodies are a 400 with the JSON error body (where FastAPI documents a 422 of
    its own shape), too large a body a 413; every route but ``/healthz`` may answer 503 when too many
    requests are in progress."""
    statuses = ["400"] if responses.pop("422", None) is not None else []
    if body:
        statuses.append("413")
    if busy:
        statuses.append("503")
    for status in statuses:
        responses.setdefault(
            status,
            {
                "description": HTTPStatus(int(status)).phrase,
                "content": {"application/json": {"schema": _ERROR_REF}},
            },
        )


# ---------------------------------------------------------------- IIIF and thumbnails

_TEXT_ERROR = {"text/plain": {"schema": {"type": "string"}}}
_JSON_DOCUMENT = {"schema": {"type": "object"}}
_IMAGE = {"schema": {"type": "string", "format": "binary"}}


def _text_errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": HTTPStatus(s).phrase, "content": _TEXT_ERROR} for s in statuses}


def _parameter(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_IDENTIFIER = _parameter(
    "identifier", "The URL-encoded virtual path of the image (`images%2Fmaps%2Fchart.jp2`).", minLength=1
)
_CONDITIONAL = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag seen before: 304 if the response would be the same.",
    "schema": {"type": "string"},
}


def _operation(
    summary: str, tag: str, parameters: list[dict[str, Any]], ok: dict[str, Any]
) -> dict[str, Any]:
    responses = {"200": ok, **_text_errors(400, 404, 405, 415, 501, 503)}
    get = {"summary": summary, "tags": [tag], "parameters": parameters, "responses": responses}
    return {"get": get}


def _image_paths() -> dict[str, Any]:
    info = {
        "description": "The image service description (IIIF info.json).",
        "content": {"application/json": _JSON_DOCUMENT, "application/ld+json": _JSON_DOCUMENT},
    }
    image = {
        "description": "The image.",
        "content": {f"image/{kind}": _IMAGE for kind in ("jpeg", "png", "webp", "tiff")},
    }
    not_modified = {"304": {"description": "Not Modified"}}
    redirect = {"303": {"description": "See Other: the image's info.json"}, **_text_errors(400, 404)}
    paths: dict[str, Any] = {}
    for version, spec in (("3", "3.0"), ("2", "2.1")):
        base = f"/iiif/{version}/{{identifier}}"
        paths[base] = {
            "get": {
                "summary": f"IIIF Image API {spec} base URI: redirects to info.json",
                "tags": ["iiif"],
                "parameters": [_IDENTIFIER],
                "responses": redirect,
            }
        }
        paths[f"{base}/info.json"] = _operation(
            f"IIIF Image API {spec} image information", "iiif", [_IDENTIFIER], info
        )
        image_operation = _operation(
            f"IIIF Image API {spec} image request",
            "iiif",
            [
                _IDENTIFIER,
                _parameter("region", "`full`, `square`, `x,y,w,h` or `pct:x,y,w,h`."),
                _parameter("size", "`max`, `w,`, `,h`, `w,h`, `!w,h`, `pct:n` (3.0: `^` prefixes)."),
                _parameter("rotation", "Degrees clockwise, `!` first to mirror."),
                _parameter("quality", "The quality.", enum=["default", "color", "gray", "bitonal"]),
                _parameter("format", "The format.", enum=["jpg", "png", "webp", "tif"]),
                _CONDITIONAL,
            ],
            image,
        )
        image_operation["get"]["responses"].update(not_modified)
        paths[f"{base}/{{region}}/{{size}}/{{rotation}}/{{quality}}.{{format}}"] = image_operation
    paths["/thumbs/{identifier}/info.json"] = _operation(
        "Pre-generated thumbnails: a IIIF 3.0 level-0 service listing their sizes",
        "thumbs",
        [_IDENTIFIER],
        {
            "description": "The thumbnail service description.",
            "content": {"application/json": _JSON_DOCUMENT},
        },
    )
    thumbnail = _operation(
        "A pre-generated thumbnail",
        "thumbs",
        [_IDENTIFIER, _parameter("size", "`max`, `w,h`, `w,` or `,h` of a listed size."), _CONDITIONAL],
        {"description": "The thumbnail.", "content": {"image/jpeg": _IMAGE}},
    )
    thumbnail["get"]["responses"].update(not_modified)
    paths["/thumbs/{identifier}/full/{size}/0/default.jpg"] = thumbnail
    return paths
