"""Pure translation of the model into Envoy resources for one proxy group.

Contract: `translate(mesh, group)` and `translate_endpoints(mesh, group)` do no I/O, read no clock
and draw no random numbers; the same input gives byte-identical output, each list sorted by name.
One module per resource type; every name comes from `meshplane.xds.names`.
"""
