"""The `mscreen` command line."""
