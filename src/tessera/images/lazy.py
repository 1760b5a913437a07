"""The image service built on first use.

``ImageService`` brings libvips, Pillow, OpenJPEG (glymur) and tifffile with it: about 37 MB of a
server's resident memory. A server that is never asked for an image (a files API or storage node)
should not pay for them, so the application holds this instead and the IIIF layer and the warm
endpoint ask it for the service when they need one (the first image request then pays the imports,
well under a second).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.config import ImagesSettings

if TYPE_CHECKING:
    from tessera.cache import CacheEngine
    from tessera.images.service import ImageService

#: How a response can be made (``tessera_iiif_responses_total{path}``), each series shown from the start.
MADE_BY = ("stored", "derivative", "crop", "tiles", "openjpeg", "libvips")


class LazyImageService:
    def __init__(self, engine: CacheEngine, settings: ImagesSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._service: ImageService | None = None
        for path in MADE_BY:  # /metrics lists the series at 0 before the first image, as it always has
            engine.metrics.image_responses.labels(path)

    def get(self) -> ImageService:
        """The service (imported and built the first time)."""
        if self._service is None:
            from tessera.images.service import ImageService

            self._service = ImageService(self.engine, self.settings)
        return self._service
