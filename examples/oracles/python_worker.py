"""A command oracle in Python (no dependencies): 0/1 knapsack.

Genome: `{"take": [true, false, ...]}` (or 0/1 integers), one flag per item below.
Score: total value of the items taken; FAILED when their weight exceeds the capacity
(the score is then the value minus a penalty). Protocol: docs/oracle-protocol.md.
"""

import json
import sys

WEIGHTS = [23, 31, 29, 44, 53, 38, 63, 85, 89, 82]
VALUES = [92, 57, 49, 68, 60, 43, 67, 84, 87, 72]
CAPACITY = 165  # optimum 309: items 0, 1, 2, 3, 5


def judge(request: dict) -> dict:
    take = request["genome"].get("take")
    if not isinstance(take, list) or len(take) != len(WEIGHTS):
        return {"id": request["id"], "status": "error", "message": f"take must list {len(WEIGHTS)} flags"}
    weight = sum(w for w, t in zip(WEIGHTS, take, strict=True) if t)
    value = sum(v for v, t in zip(VALUES, take, strict=True) if t)
    over = max(0, weight - CAPACITY)
    return {
        "id": request["id"],
        "status": "failed" if over else "passed",
        "score": value - 10 * over,
        "metrics": {"weight": weight, "value": value},
        **({"message": f"{over} over capacity"} if over else {}),
    }


for line in sys.stdin:
    request = json.loads(line)
    try:
        verdict = judge(request)
    except Exception as exc:  # noqa: BLE001 - one bad candidate must not kill the worker
        verdict = {"id": request.get("id"), "status": "error", "message": repr(exc)[:1000]}
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
