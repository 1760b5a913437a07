"""Plain data shared by the hosting modules: what an upload is, and why one is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Types an upload may have, as sniffed from its bytes.
ImageType = Literal["jpeg", "png", "webp", "gif", "avif", "heif"]
#: Formats derivatives are made in.
Format = Literal["jpeg", "webp", "avif"]

MEDIA_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "avif": "image/avif",
    "heif": "image/heif",
}
#: File name suffix of each derivative format (``/i/{link}/{width}.{suffix}``).
SUFFIXES: dict[str, Format] = {"jpg": "jpeg", "webp": "webp", "avif": "avif"}


class Rejected(Exception):
    """An upload refused: ``status`` (413, 415, 422) and a reason for the client's JSON ``error``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __reduce__(self) -> tuple[type[Rejected], tuple[int, str]]:
        return (Rejected, (self.status, self.reason))  # raised in a worker process, re-raised here


@dataclass(frozen=True, slots=True)
class Limits:
    """What an upload may be (``[hosting]`` settings)."""

    max_bytes: int
    max_pixels: int
    max_width: int
    max_height: int
    max_frames: int


@dataclass(frozen=True, slots=True)
class Probe:
    """What the header of an upload says, read without decoding pixels."""

    type: ImageType
    width: int
    height: int
    #: Frames (pages) of an animation; 1 for a still image.
    frames: int = 1
    #: EXIF orientation (1 to 8) when the header has one: 5 to 8 swap width and height once applied.
    orientation: int = 1

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.type]

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as shown, once the EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


def effective_width(width: int, image_width: int) -> int:
    """The width a derivative asked at ``width`` really has: never wider than the image."""
    return min(width, image_width)
