"""What the generator has done: plain counters, exported by metrics.py.

Kept free of Prometheus so breeding (pure) and the servicer can count without knowing how
the numbers are exported. Breeding threads and the event loop both write here: every
field a thread writes changes under the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass(slots=True)
class GeneratorStats:
    """Counters of the generator (see metrics.py for their exported names).

    `chunks` and `candidates` (elites included) are counted by the breeding threads as
    each chunk is bred; `streams` by the event loop as each Generate stream starts;
    `pending` is how many chunks are queued for or being bred in the breeding threads
    right now (0 once every stream that ended has finished the chunk it had in progress).
    `advertised` is how many DNA names the agent registered with, `left_out` how many
    valid DNAs did not fit in its advertisement (both set once the library has been read).
    """

    chunks: int = 0
    candidates: int = 0
    streams: int = 0
    pending: int = 0
    advertised: int = 0
    left_out: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def chunk_bred(self, candidates: int) -> None:
        with self._lock:
            self.chunks += 1
            self.candidates += candidates

    def chunk_queued(self) -> None:
        with self._lock:
            self.pending += 1

    def chunk_settled(self) -> None:
        """A queued chunk was bred, failed, or was cancelled before it started."""
        with self._lock:
            self.pending -= 1
