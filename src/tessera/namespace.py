"""The mount table: a virtual path ``/images/a/b.jp2`` resolves to (mount ``images``, origin key ``a/b.jp2``).

Validation is strict because paths come from clients: anything that could escape a mount or confuse
an origin (``..``, ``.``, empty segments, NUL and other control characters, backslashes, over-long
names) is refused with ``InvalidPath`` before any origin is asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tessera.config import MountSettings, OriginSettings, StorageSettings
from tessera.errors import InvalidPath, UnknownMount
from tessera.lru import LRU
from tessera.origins import Origin, open_origin

#: S3's limit for a key; also a sane bound for a virtual path.
MAX_PATH_BYTES = 1024
#: Longest single path segment most filesystems accept.
MAX_SEGMENT_BYTES = 255
#: Memory for resolved paths kept (only valid paths of known mounts are kept).
RESOLVED_MEMO_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Resolved:
    """A virtual path split into its mount and the key inside that mount's origin."""

    mount: str
    key: str
    origin: Origin

    @property
    def path(self) -> str:
        return f"/{self.mount}/{self.key}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def split_path(path: str, *, allow_prefix: bool = False) -> tuple[str, str]:
    """Validate a virtual path and split it into ``(mount, key)``.

    ``allow_prefix`` accepts a bare mount (``/images``) or a trailing slash, as warm/purge of a prefix do.
    """
    if not isinstance(path, str) or not path:
        raise InvalidPath("empty path")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPath(f"path longer than {MAX_PATH_BYTES} bytes")
    if _CONTROL.search(path):
        raise InvalidPath("path contains NUL or control characters")
    if "\\" in path:
        raise InvalidPath("path contains a backslash")
    body = path[1:] if path.startswith("/") else path
    if allow_prefix and body.endswith("/"):
        body = body[:-1]
    segments = body.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidPath(f"path segment {segment!r} is not allowed in {path!r}")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidPath(f"path segment longer than {MAX_SEGMENT_BYTES} bytes")
    mount, key = segments[0], "/".join(segments[1:])
    if not key and not allow_prefix:
        raise InvalidPath(f"{path!r} names a mount, not an object")
    return mount, key


class Namespace:
    """Named mounts, each with its origin, built once from the settings."""

    def __init__(
        self,
        mounts: dict[str, MountSettings],
        origin_settings: OriginSettings,
        small_object_size: int,
        storage: StorageSettings | None = None,
    ) -> None:
        self._origins: dict[str, Origin] = {}
        self._resolved: LRU[str, Resolved] = LRU(RESOLVED_MEMO_BYTES)
        for name, mount in mounts.items():
            split_path(f"/{name}", allow_prefix=True)  # mount names obey the same rules as segments
            self._origins[name] = open_origin(name, mount, origin_settings, small_object_size, storage)

    @property
    def mounts(self) -> list[str]:
        return sorted(self._origins)

    def origin(self, mount: str) -> Origin:
        try:
            return self._origins[mount]
        except KeyError:
            raise UnknownMount(f"no mount named {mount!r} (mounts: {', '.join(self.mounts)})") from None

    def resolve(self, path: str) -> Resolved:
        """Resolve the virtual path of one object (kept once valid: the same paths come back all the time)."""
        resolved = self._resolved.get(path)
        if resolved is None:
            mount, key = split_path(path)
            resolved = Resolved(mount, key, self.origin(mount))
            self._resolved.put(path, resolved)
        return resolved

    def resolve_prefix(self, path: str) -> Resolved:
        """Resolve a mount or a prefix inside one (``/images``, ``/images/maps/``)."""
        mount, key = split_path(path, allow_prefix=True)
        return Resolved(mount, key, self.origin(mount))
