"""Helix orchestrator service."""
