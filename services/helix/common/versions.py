"""Versions that processes of a deployment agree on through the registry's labels.

They live here, below every service, because more than one service reads them: the
generator advertises its major version, the orchestrator (which may not import the
generator) mixes only generators of its own major in a run.
"""

from __future__ import annotations

# The label naming a generator agent's major version.
GENERATOR_MAJOR_LABEL = "helix.dev/generator-major"

# The generator's major version: Generate's output is a pure function of its request
# within one major version (generator.proto). Bump it whenever the output for some request
# changes: an operator, a `Draw` value, the chunking, a default of the DNA normalisation,
# the ranking or selection rule. Agents advertise it (label helix.dev/generator-major) so a
# run mixes only generators of one major. 2 (issue 11): textbook OX1, PMX and ERX, the
# per-child mutation probability, parents' copies counted in tournaments, and random
# streams derived from one Philox per chunk.
GENERATOR_MAJOR = 2
