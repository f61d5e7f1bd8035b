"""Every table of the schema in one ``MetaData``: what Alembic's ``target_metadata`` compares with the database.

The tables are defined beside their queries (``schema``, ``registry``, ``feedback``, ``shadow``,
``partitions``); importing those modules registers them on ``storage.schema.metadata``. A new table module
goes in this list. The monthly partitions of ``review_sentiment`` are made at run time, not by migrations:
``include_name`` keeps Alembic from comparing them.
"""

from __future__ import annotations

import re

from storage import feedback, partitions, registry, shadow  # noqa: F401  (their tables register on the metadata)
from storage.schema import metadata

__all__ = ["include_name", "metadata"]


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's filter: every object but the run-time partitions (and their indexes)."""
    return not (name and re.match(partitions.PARTITION_NAME, name))
