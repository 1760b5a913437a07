"""Making the IIIF thumbnails of every image under a prefix ahead of time (``tessera warm --thumbs``).

The same for the command working on the cache directory itself and for the server's warm endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tessera.errors import TesseraError

if TYPE_CHECKING:
    from tessera.images.service import ImageService


@dataclass
class ThumbnailReport:
    """What one ``warm --thumbs`` did: objects looked at, thumbnails made, and objects skipped (why)."""

    objects: int = 0
    thumbnails: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


async def make_thumbnails_at(service: ImageService, path: str) -> ThumbnailReport:
    """Make the thumbnails of the image at ``path`` or of every image under that prefix.

    An object that is not a readable image (or whose origin fails) is skipped and reported, so one
    stray file does not stop a whole collection.
    """
    report = ThumbnailReport()
    for target in await service.engine.objects_at(path):
        report.objects += 1
        try:
            report.thumbnails += await service.make_thumbnails(target.lstrip("/"))
        except TesseraError as exc:
            report.skipped[target] = str(exc)
    return report
