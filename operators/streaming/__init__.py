"""Streaming contracts shared by the live operators: the engine interface and per-stream ordering."""
