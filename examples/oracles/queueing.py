"""A `python` oracle: staffing a queue (M/M/c with a finite waiting room), by simulation.

Customers arrive at random (a Poisson process, ARRIVALS_PER_MINUTE) at a service desk
with `servers` identical servers, each serving at `speed` customers per minute
(exponential service times), and a waiting room of `waiting_room` places; a customer who
finds every server busy and the room full is turned away. Faster servers cost more than
linearly, waiting costs by the minute, and a customer turned away costs a lump sum, so the
DNA (examples/dna/queueing.yaml) trades staff cost against waiting:

    score = cost per hour = servers x (DESK_COST + SERVER_COST x speed^1.5)
                          + WAIT_COST x minutes waited per hour
                          + LOST_COST x customers turned away per hour     (minimise)

The verdict is FAILED when more than SERVICE_LEVEL of the customers are turned away (the
service-level target is missed), PASSED otherwise; metrics say why. One simulated shift of
SHIFT_MINUTES, pure Python; the random stream is seeded from the genome, so a genome
always gets the same verdict (as Helix's verdict cache expects).

Entry points: `queueing:evaluate` (scalar, one genome) and `queueing:evaluate_batch`
(batch, a list of genomes). See docs/oracle-protocol.md, "Python oracles".
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from collections import deque

ARRIVALS_PER_MINUTE = 2.0
SHIFT_MINUTES = 480.0
DESK_COST = 8.0  # per server and hour, whatever its speed
SERVER_COST = 15.0  # per server and hour at speed 1, growing as speed^1.5
WAIT_COST = 0.5  # per customer-minute waited
LOST_COST = 10.0  # per customer turned away
SERVICE_LEVEL = 0.05  # at most this fraction turned away


def _seed(genome: dict) -> int:
    canonical = json.dumps(genome, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big")


def _parameters(genome: dict) -> tuple[int, float, int]:
    servers, speed, room = genome["servers"], genome["speed"], genome["waiting_room"]
    if not isinstance(servers, int) or servers < 1:
        raise ValueError(f"servers must be an integer >= 1, not {servers!r}")
    if not isinstance(speed, int | float) or speed <= 0:
        raise ValueError(f"speed must be a positive number, not {speed!r}")
    if not isinstance(room, int) or room < 0:
        raise ValueError(f"waiting_room must be an integer >= 0, not {room!r}")
    return servers, float(speed), room


def simulate(servers: int, speed: float, room: int, rng: random.Random) -> dict[str, float]:
    """One shift, first come first served: customers, waits, losses and busy time."""
    free_at = [0.0] * servers  # when each server is next free (a heap)
    waiting: deque[float] = deque()  # service start times of the customers in the room
    now = served = lost = 0
    waited = busy = 0.0
    while True:
        now += rng.expovariate(ARRIVALS_PER_MINUTE)
        if now > SHIFT_MINUTES:
            break
        while waiting and waiting[0] <= now:  # they have left the room for a server
            waiting.popleft()
        start = max(now, free_at[0])
        if start > now and len(waiting) >= room:
            lost += 1
            continue
        service = rng.expovariate(speed)
        heapq.heapreplace(free_at, start + service)
        if start > now:
            waiting.append(start)
        served += 1
        waited += start - now
        busy += max(0.0, min(start + service, SHIFT_MINUTES) - start)  # within the shift
    return {"served": served, "lost": lost, "waited": waited, "busy": busy}


def evaluate(genome: dict) -> dict:
    """The verdict of one genome ({"servers": int, "speed": float, "waiting_room": int})."""
    servers, speed, room = _parameters(genome)
    run = simulate(servers, speed, room, random.Random(_seed(genome)))
    hours = SHIFT_MINUTES / 60
    arrived = run["served"] + run["lost"]
    lost_fraction = run["lost"] / arrived if arrived else 0.0
    staff = servers * (DESK_COST + SERVER_COST * speed**1.5)
    waiting = WAIT_COST * run["waited"] / hours
    turned_away = LOST_COST * run["lost"] / hours
    verdict: dict = {
        "status": "failed" if lost_fraction > SERVICE_LEVEL else "passed",
        "score": round(staff + waiting + turned_away, 6),
        "metrics": {
            "staff_cost": round(staff, 6),
            "wait_cost": round(waiting, 6),
            "lost_cost": round(turned_away, 6),
            "mean_wait_minutes": run["waited"] / run["served"] if run["served"] else 0.0,
            "lost_fraction": lost_fraction,
            "utilisation": run["busy"] / (servers * SHIFT_MINUTES),
        },
    }
    if verdict["status"] == "failed":
        verdict["message"] = f"{lost_fraction:.1%} turned away (target {SERVICE_LEVEL:.0%})"
    return verdict


def evaluate_batch(genomes: list) -> list:
    """The batch form: one verdict per genome, in order."""
    return [evaluate(genome) for genome in genomes]
