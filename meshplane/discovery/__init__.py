"""Sources: where the mesh's content comes from (policy files, and later Kubernetes and edge registries).

Each source turns what it watches into `meshplane.model` objects and reports a `SourceStatus`.
Sources import `meshplane.model` only: never `meshplane.xds`, grpc or Envoy's protos (import-linter
enforces it). The composition root merges their output and hands it to the translators.
"""
