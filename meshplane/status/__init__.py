"""What operators read: health, readiness, and the state of sources and proxies. Never writes."""
