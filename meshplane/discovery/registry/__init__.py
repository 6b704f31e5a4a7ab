"""The edge registry as a source: devices, mobile apps and gateways at edge sites register here
with a lease, and their live set joins the mesh.

`registry` owns leases, validation and the live set of devices; `store` persists registrations
(SQLite by default); `auth` maps credentials to principals; `identity` signs the certificate
signing requests devices send with their registrations; `heap` keeps the fleet read at start-up
and at each full re-read out of the garbage collector's scans. The wire API (gRPC and its JSON
mirror) lives in `meshplane.registry_api`, which imports this package and never the reverse:
sources may not import grpc.
"""
