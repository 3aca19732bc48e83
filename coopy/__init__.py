"""coopy: a daemonless, rootless sandbox for AI coding agents."""

__version__ = "0.1.0"
