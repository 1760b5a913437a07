"""Alembic migrations of the hosting link map, run by ``LinkMap.open`` (no ``alembic.ini`` needed)."""
