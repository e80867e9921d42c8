"""prefork-work: a Redis-backed background job server, wire-compatible with gocraft/work."""

__version__ = "0.1.0"
