"""Put grpcio-health-checking's own `grpc/health/v1/health.proto` into a descriptor set.

The health proto vendored here (Debian's grpc-proto, 2023) has Check and Watch; the
servers also answer List (helix.common.health), as the `grpc_health.v1` module of the
pinned grpcio-health-checking describes it. Replacing the compiled file by that module's
descriptor keeps the protoset (grpcurl -protoset, buf curl --schema, reflection) equal to
what a Helix server answers. What the module adds (List and its two messages) is appended
after the vendored file's own definitions, so their comments (source info, indexed by
position) stay where they were.

    python protos/third_party/runtime_health.py generated/helix.protoset
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2


def main(path: Path) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    runtime = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(runtime)
    (vendored,) = (f for f in files.file if f.package == runtime.package)
    known = {message.name for message in vendored.message_type}
    vendored.message_type.extend(m for m in runtime.message_type if m.name not in known)
    for service in vendored.service:
        (module_service,) = (s for s in runtime.service if s.name == service.name)
        methods = {method.name for method in service.method}
        service.method.extend(m for m in module_service.method if m.name not in methods)
    path.write_bytes(files.SerializeToString(deterministic=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
