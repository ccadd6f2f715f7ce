"""Helix registry service."""
