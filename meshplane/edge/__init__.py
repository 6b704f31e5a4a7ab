"""The edge registry's wire front: the gRPC `meshplane.edge.v1.Registry` service and its JSON
mirror over HTTP. Maps wire messages and credentials onto `meshplane.discovery.edge.registry`
calls and registry errors onto gRPC statuses; owns no rules of its own. Imports the registry and
the generated API (`meshplane.api`), never the xDS side.
"""
