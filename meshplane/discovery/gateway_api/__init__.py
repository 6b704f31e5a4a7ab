"""The Gateway API source (gateway.networking.k8s.io, v1.6.x standard channel).

One module per concern: `fields.py` reads untrusted JSON fields, `references.py` the references
objects make to each other, `filters.py`, `matches.py` and `route_attachment.py` the parts routes
share, then one module per kind (`gateway_classes.py`, `gateways.py`, `http_routes.py`,
`grpc_routes.py`, `reference_grants.py`, `backend_tls_policies.py`), `objects.py` the content value
and its change set, `resolve.py` the objects as the model's Gateways with the status owed
(`conditions.py`, pure), `class_status.py` and `object_status.py` the status to write (pure),
`status_writer.py` writing it, and `source.py` the watches. Importing the package imports none of them (the CLI
reads one constant from `gateway_classes.py` before anything heavy loads).
"""
