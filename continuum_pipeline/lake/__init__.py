"""The lake: Iceberg tables through pyiceberg, read by DuckDB."""
