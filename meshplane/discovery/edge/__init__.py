"""The edge registry: devices, mobile apps and gateways at edge sites register here with a lease.

`registry` owns leases, validation and the live set of devices; `store` persists registrations
(SQLite by default); `auth` maps credentials to principals. The wire API (gRPC and its JSON
mirror) lives in `meshplane.edge`, because sources may not import grpc.
"""
