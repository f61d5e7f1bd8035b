"""Every table of the schema in one ``MetaData``: what Alembic's ``target_metadata`` compares with the database.

The tables are defined beside their queries (``schema``, ``registry``, ``feedback``, ``shadow``); importing
those modules registers them on ``storage.schema.metadata``. A new table module goes in this list.
"""

from __future__ import annotations

from storage import feedback, registry, shadow  # noqa: F401  (their tables register on the metadata)
from storage.schema import metadata

__all__ = ["metadata"]
