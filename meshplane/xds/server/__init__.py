"""The gRPC xDS server: SotW and Delta, over ADS and the per-type services."""
