"""Thin adapters over model libraries, shared by the runtimes (transformers for now)."""
