"""`python -m cli` = `mscreen` (the API starts training runs this way)."""

from cli.main import main

main()
