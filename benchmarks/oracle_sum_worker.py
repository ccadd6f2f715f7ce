"""A trivial command-oracle worker for bench_oracle_command: score = the sum of gene `x`.

The cheapest honest worker: parse the request line, answer one verdict line, flush (the
protocol requires a flush per verdict, docs/oracle-protocol.md).
"""

import json
import sys


def main() -> None:
    out = sys.stdout
    for raw in sys.stdin:
        request = json.loads(raw)
        score = sum(request["genome"]["x"])
        out.write(json.dumps({"id": request["id"], "status": "passed", "score": score}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
