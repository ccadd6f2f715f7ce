"""Helix oracle service."""
