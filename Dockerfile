# One image for every Helix service; the command picks the role (`helix up` = embedded).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY generated/ generated/
COPY services/ services/
RUN pip install --no-cache-dir -c requirements.lock . && useradd --create-home helix
USER helix
ENV HELIX_HOST=0.0.0.0 HELIX_DATA_DIR=/home/helix/data
EXPOSE 50051 9464
HEALTHCHECK CMD python -c "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
s = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')); \
sys.exit(s.Check(h.HealthCheckRequest(), timeout=3).status != h.HealthCheckResponse.SERVING)"
CMD ["helix", "up", "--metrics-port", "9464"]
