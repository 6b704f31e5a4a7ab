"""The edge registry's API: its wire front, served and used.

`service` is the gRPC `meshplane.edge.v1.Registry` service and `http` its JSON mirror over HTTP;
`server` runs both over one registry inside `meshplane serve`, whose `--registry-…` flags are
`options`; `console` is `meshplane devices`, a client of the JSON mirror. Maps wire messages and
credentials onto `meshplane.discovery.registry` calls and registry errors onto gRPC statuses; owns
no rules of its own. Imports the registry and the generated API (`meshplane.api`), never the xDS
side; the registry never imports this package (an import-linter contract keeps both true).

Not called `edge`: that word names the edge proxy roles (`meshplane/xds/translate/edge_*.py`) and
the sites they serve; this package is the registry's API, whoever registers through it.
"""
