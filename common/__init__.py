"""Pieces both services use: structured logs, CLI plumbing, gRPC server options."""
