"""Persistence: the database (engine, sessions, ORM), the OME-Zarr image store and the queries
the service, training and migrations share.

It sits below the service (``app``) and training, and above ``models`` and ``hardware``: it
imports neither the service nor training (import-linter enforces this, see pyproject.toml).
"""
