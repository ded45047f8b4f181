"""The FastAPI service: settings, database, scan worker, REST API and CLI."""
