"""Plate geometry, the microscope boundary and its implementations.

Knows nothing about models or the database (see docs/architecture.md).
"""
