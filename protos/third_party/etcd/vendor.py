"""Copy etcd's v3 API protos from an etcd git checkout, stripped for protoc's Python output.

Usage: python vendor.py ETCD_GIT_DIR TAG   (writes helix/etcdpb/*.proto next to this file)

What changes, and nothing else: the gogoproto and google.api imports and options (Go and
grpc-gateway code generation only; they do not touch the wire format or the method paths),
and the import paths, moved under helix/etcdpb/ so that the Python modules are
helix.etcdpb.*_pb2 rather than a top-level `etcd` package. The proto packages
(etcdserverpb, mvccpb, authpb) stay, so the gRPC method names are etcd's own.
"""

import re
import subprocess
import sys
from pathlib import Path

FILES = {
    "api/etcdserverpb/rpc.proto": "rpc.proto",
    "api/mvccpb/kv.proto": "kv.proto",
    "api/authpb/auth.proto": "auth.proto",
}
IMPORTS = {
    '"etcd/api/mvccpb/kv.proto"': '"helix/etcdpb/kv.proto"',
    '"etcd/api/authpb/auth.proto"': '"helix/etcdpb/auth.proto"',
}


def strip(text: str) -> str:
    lines = []
    depth = 0  # inside an `option (google.api.http) = {...};` block while > 0
    for line in text.splitlines():
        if depth or "option (google.api.http) = {" in line:
            depth += line.count("{") - line.count("}")
            continue
        if re.match(r'import "(gogoproto/gogo|google/api/annotations)\.proto";', line):
            continue
        if line.startswith("option (gogoproto.") or line == "// for grpc-gateway":
            continue
        for old, new in IMPORTS.items():
            line = line.replace(old, new)
        lines.append(line)
    out = "\n".join(lines) + "\n"
    if "gogoproto" in out or "google.api" in out:
        raise SystemExit("an annotation was left: extend vendor.py")
    return out


def main() -> None:
    git_dir, tag = sys.argv[1], sys.argv[2]
    target = Path(__file__).parent / "helix" / "etcdpb"
    target.mkdir(parents=True, exist_ok=True)
    for source, name in FILES.items():
        text = subprocess.run(
            ["git", "--git-dir", git_dir, "show", f"{tag}:{source}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (target / name).write_text(strip(text))


if __name__ == "__main__":
    main()
