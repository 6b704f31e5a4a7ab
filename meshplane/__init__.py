"""meshplane: an Envoy xDS control plane for meshes that cross the cloud, edge sites and devices."""

__version__ = "0.1.0"
