"""A Gateway API conformance harness: upstream's tests as data, run against the real meshplane."""
