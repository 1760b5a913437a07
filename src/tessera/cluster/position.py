"""Where a node is in the invalidation stream, kept in ``cache.dir`` across restarts.

The file holds the Redis epoch the position belongs to (a token kept in Redis: a Redis that lost its
data has another one), the id of the last entry applied, and ``stale_before``: when this node last
decided to revalidate everything. That time is kept so a crash during a revalidation cannot make the
index's older "validated at" times count as fresh again after the restart.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The file's name in ``cache.dir``.
FILE_NAME = "cluster-position.json"
#: The id before every stream entry.
START = "0-0"


@dataclass(frozen=True, slots=True)
class Position:
    epoch: str
    last_id: str = START
    stale_before: float = 0.0


def stream_id(text: str) -> tuple[int, int]:
    """A stream id (``MILLISECONDS-SEQUENCE``) as a pair that compares in stream order."""
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence or 0)


class PositionFile:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME

    def load(self) -> Position | None:
        """The saved position; None if there is none (or it cannot be read: then it is as good as lost)."""
        try:
            data = json.loads(self.path.read_text())
            position = Position(str(data["epoch"]), str(data["last_id"]), float(data["stale_before"]))
            stream_id(position.last_id)
            return position
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring the unreadable stream position %s: %s", self.path, error)
            return None

    def save(self, position: Position) -> None:
        """Write the position atomically (a crash leaves the old file or the new one, never half)."""
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "w") as out:
            json.dump(asdict(position), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
