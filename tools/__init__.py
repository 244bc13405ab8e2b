"""Maintenance commands of the project (not part of the pipeline)."""
