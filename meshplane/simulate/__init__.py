"""A simulated fleet of edge devices for demos, docker-compose and benchmarks (`meshplane simulate`).

`meshplane.simulate.fleet` is the library (`Fleet`, `FleetOptions`, `FleetStats`);
`meshplane.simulate.cli` the command. A client of the edge registry only: it speaks the
generated gRPC API and never imports the control plane's own modules.
"""
