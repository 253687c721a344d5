"""Output contract of reslabel: the Parquet schema, row statuses and versions.

This layer imports only pyarrow and the standard library; ``pipeline`` and ``jobs`` build on it.
"""
from schemas.labels import (
    LABEL_SCHEMA,
    LEGACY_COLUMNS,
    LEGACY_SCHEMA,
    SCHEMA_VERSION,
    SEGMENT_TYPE,
    Status,
    make_row,
    rows_to_table,
    validate_row,
)

__all__ = ["LABEL_SCHEMA", "LEGACY_COLUMNS", "LEGACY_SCHEMA", "SCHEMA_VERSION", "SEGMENT_TYPE", "Status", "make_row",
           "rows_to_table", "validate_row"]
