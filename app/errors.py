"""What a service call can refuse, independent of HTTP.

Services raise these; the API turns each into its status code and ``{"detail": message}``
(app/api/errors.py), the CLI into one ``error:`` line.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses; ``status_code`` is the HTTP status that says why."""

    status_code = 400


class NotFoundError(ServiceError):
    """The plate, scan, well, field or run asked for does not exist."""

    status_code = 404


class ConflictError(ServiceError):
    """The resource is not in a state that allows this (e.g. cancelling a finished scan)."""

    status_code = 409


class GoneError(ServiceError):
    """It existed, but its stored data is gone (e.g. an image file deleted from disk)."""

    status_code = 410


class InvalidRequestError(ServiceError):
    """The request names something malformed (e.g. a well name that is not on the plate)."""

    status_code = 422


class UnavailableError(ServiceError):
    """A component the request needs cannot run here (e.g. onnxruntime missing)."""

    status_code = 503
