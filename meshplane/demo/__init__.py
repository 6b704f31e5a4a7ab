"""The `make run` demo: the control plane on examples/, local backends and a real Envoy."""
