"""The model registry: MLflow model versions with aliases and lineage tags."""
