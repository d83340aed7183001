"""SQL models: one `.sql` file per model under dbt_like_sql/, run by DuckDB over the lake."""
