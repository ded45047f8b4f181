"""REST API (FastAPI routers, schemas, dependencies)."""
