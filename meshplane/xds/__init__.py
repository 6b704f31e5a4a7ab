"""Envoy xDS: the model translated into Envoy resources, snapshotted, cached and served over gRPC."""
