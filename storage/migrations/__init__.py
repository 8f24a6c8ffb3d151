"""Alembic migrations of the AVA schema (a package so non-editable installs ship them)."""
