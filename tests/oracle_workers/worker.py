"""A JSON Lines test worker; argv[1] picks its behaviour (sum of the genome's `x` reals)."""

import json
import os
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "ok"


def score(genome: dict) -> float:
    return float(sum(genome.get("x", [0.0])))


def hold_or_write(request: dict, seen: int, held: list[str]) -> bool:
    """Candidates 0-2 of the first call are held back and written in one write with the
    poison's bad line (so the pool reads them together); True when the request is handled."""
    genome = request["genome"]
    if genome.get("poison"):
        bad = (
            json.dumps({"id": request["id"], "status": "passed", "score": 0, "message": "m" * 3000})
            if MODE == "long_verdict"
            else '{"id": "\xff\xfe"}'
        )
        lines = "".join(line + "\n" for line in [*held, bad])
        sys.stdout.buffer.write(lines.encode("latin-1"))
        sys.stdout.flush()
        return True
    if seen < 4 and genome["x"][0] < 3:
        verdict = {"id": request["id"], "status": "passed", "score": score(genome)}
        held.append(json.dumps(verdict))
        return True
    return False


def main() -> None:  # noqa: C901, PLR0912 - one branch per pathology
    seen = 0
    held: list[str] = []
    for raw in sys.stdin:
        request = json.loads(raw)
        seen += 1
        poison = request["genome"].get("poison", False)
        if poison and MODE == "crash":
            sys.stderr.write("boom: poisoned candidate\n")
            sys.stderr.flush()
            os._exit(3)
        if poison and MODE == "hang":
            time.sleep(3600)
        if poison and MODE == "garbage":
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
            continue
        if poison and MODE == "wrong_id":
            request["id"] = "f" * 32
        if poison and MODE == "flood_stdout":
            sys.stdout.write("x" * (4 << 20))
            sys.stdout.flush()
            continue
        if MODE == "flood_stderr":
            sys.stderr.write("noise " * 20000 + "\n")
            sys.stderr.flush()
        if poison and MODE == "fork_exit":
            for _ in range(3):
                if os.fork() == 0:
                    time.sleep(3600)
                    os._exit(0)
            os._exit(0)
        if MODE == "exit_after" and seen > 2:
            sys.exit(0)
        if MODE in ("long_verdict", "not_utf8") and hold_or_write(request, seen, held):
            continue
        if MODE == "list_status" and poison:
            sys.stdout.write(json.dumps({"id": request["id"], "status": ["passed"]}) + "\n")
            sys.stdout.flush()
            continue
        if MODE == "bad_score" and poison:
            sys.stdout.write(
                json.dumps({"id": request["id"], "status": "passed", "score": "NaN"}) + "\n"
            )
            sys.stdout.flush()
            continue
        if MODE == "env":
            verdict = {
                "id": request["id"],
                "status": "passed",
                "score": len(os.environ),
                "message": os.getcwd() + "|" + ",".join(sorted(os.environ)),
            }
        else:
            verdict = {
                "id": request["id"],
                "status": "passed",
                "score": score(request["genome"]),
                "metrics": {"seen": seen},
            }
        sys.stdout.write(json.dumps(verdict) + "\n")
        sys.stdout.flush()


main()
