"""Bootstraps for Envoy and proxyless gRPC clients: `meshplane bootstrap ROLE` (render.py: pure
rendering; cli.py: the command). Imports nothing of the control plane."""
