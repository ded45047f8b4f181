"""Request and response bodies, one module per resource (separate Create / Public shapes).

Below the HTTP layer: services and the CLI use them too, routers only translate HTTP.
"""
