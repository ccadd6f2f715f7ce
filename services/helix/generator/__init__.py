"""Helix generator service."""
