"""A JSON Lines test worker; argv[1] picks its behaviour (sum of the genome's `x` reals)."""

import json
import os
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "ok"


def score(genome: dict) -> float:
    return float(sum(genome.get("x", [0.0])))


def main() -> None:  # noqa: C901, PLR0912 - one branch per pathology
    seen = 0
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
