"""SiLA 2 interface of the screen: the PlateScreening feature served over gRPC (issue 17).

A lab scheduler (SiLA 2 client) drives the same services as the REST API: the same runtime
(database, scan worker, model) and the same API keys and roles. The feature is defined in
``PlateScreening.sila.xml`` (the contract; :mod:`app.sila.feature` loads it), implemented in
:mod:`app.sila.server`. Needs the ``sila`` extra (``pip install mscreen[sila]``).
"""

import sys

# sila2 compiles its protocol files at import time and re-adds SiLAFramework.proto for each
# feature, which only protobuf's pure-Python implementation accepts; sila2 selects it through
# PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION, which protobuf reads once, on its first import. If
# something (onnx, for one) loaded protobuf before, say so here rather than fail inside sila2.
if "google.protobuf" in sys.modules:
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() != "python":
        raise RuntimeError(
            "app.sila must be imported before protobuf is (onnx imports it), or the process "
            "started with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python: sila2 needs protobuf's "
            f"pure-Python implementation, and this process loaded {api_implementation.Type()!r}"
        )
