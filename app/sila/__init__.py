"""SiLA 2 interface of the screen: the PlateScreening feature served over gRPC (issue 17).

A lab scheduler (SiLA 2 client) drives the same services as the REST API: the same runtime
(database, scan worker, model) and the same API keys and roles. The feature is defined in
``PlateScreening.sila.xml`` (the contract; :mod:`app.sila.feature` loads it), implemented in
:mod:`app.sila.server`. Needs the ``sila`` extra (``pip install mscreen[sila]``).
"""
