"""Configuration of the generator service."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helix.common.config import ServerConfig, require, setting


@dataclasses.dataclass(frozen=True)
class GeneratorConfig(ServerConfig):
    """The generator: its DNA library, its breeding threads, and how it registers."""

    generator_dna_dir: Path | None = setting(
        None, "directory of DNA documents served as dnas/{name} (embedded: DATA_DIR/dnas)"
    )
    generator_workers: int = setting(2, "threads that breed candidates (NumPy releases the GIL)")
    generator_cache_entries: int = setting(1024, "parsed DNA documents kept in memory")
    generator_capacity: int = setting(
        0,
        "Generate streams served at once and advertised; more are refused (0: 4 per worker)",
    )
    generator_advertise_bytes: int = setting(
        48 << 10,
        "bytes of DNA names registered at most: the first valid DNAs by name that fit "
        "(the registry bounds an agent's size); every DNA is served either way",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.generator_workers <= 256, "generator_workers", "1..256")
        require(
            1 <= self.generator_cache_entries <= 1_000_000, "generator_cache_entries", "1..1000000"
        )
        require(0 <= self.generator_capacity <= 1_000_000, "generator_capacity", "0..1000000")
        require(
            1024 <= self.generator_advertise_bytes <= 4 << 20,
            "generator_advertise_bytes",
            "1024..4194304",
        )

    @property
    def advertised_capacity(self) -> int:
        return self.generator_capacity or 4 * self.generator_workers
