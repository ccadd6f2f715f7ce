# One image for every Helix role; the command picks it:
#   helix up                    the embedded suite (the default CMD below)
#   helix registry serve        helix generator serve
#   helix oracle serve          helix orchestrator serve
# docker-compose.yml and deploy/ (Kubernetes) run it that way; tests/test_deploy.py parses
# every helix command line here and there with helix's own argument parser.
#
# Runs as the fixed non-root user 10001:10001 and works with a read-only root filesystem:
# state lives in /var/lib/helix (a volume) and scratch files in /tmp (a tmpfs); bytecode
# is compiled at build time, so nothing is written elsewhere.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the package and its pinned dependencies in a virtualenv -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/helix
COPY pyproject.toml requirements.lock README.md ./
COPY generated/ generated/
COPY services/ services/
# With the otel extra: tracing stays off (and costs nothing) until OTEL_* variables ask.
RUN /opt/helix/bin/pip install --constraint requirements.lock '.[otel]' \
    && /opt/helix/bin/python -m compileall -q /opt/helix

# --- runtime: the virtualenv, the example DNAs and oracle config, nothing else ------------
FROM ${PYTHON_IMAGE}
ARG HELIX_UID=10001
ARG HELIX_GID=10001
# Mount points owned by helix: an empty named volume mounted on one takes its owner.
RUN groupadd --system --gid "${HELIX_GID}" helix \
    && useradd --system --uid "${HELIX_UID}" --gid "${HELIX_GID}" --no-create-home \
        --home-dir /var/lib/helix --shell /usr/sbin/nologin helix \
    && install -d -o "${HELIX_UID}" -g "${HELIX_GID}" -m 0700 /var/lib/helix /var/lib/helix/keys \
    && install -d -o "${HELIX_UID}" -g "${HELIX_GID}" -m 0755 /etc/helix
COPY --from=build /opt/helix /opt/helix
COPY examples/dna/ /usr/share/helix/dna/
COPY examples/oracles/builtins.yaml /usr/share/helix/oracles.yaml
# HELIX_HOST / HELIX_METRICS_HOST: every server listens beyond loopback in a container.
ENV PATH=/opt/helix/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/helix \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    HELIX_HOST=0.0.0.0 \
    HELIX_METRICS_HOST=0.0.0.0
USER ${HELIX_UID}:${HELIX_GID}
WORKDIR /var/lib/helix
VOLUME ["/var/lib/helix"]
# 50051: gRPC (all helix.v1 services, health, reflection); 9464: Prometheus /metrics.
EXPOSE 50051 9464
# grpc.health.v1 Check of the whole server; exit 0 only when SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["helix", "probe", "--address", "127.0.0.1:50051", "--timeout", "3s"]
STOPSIGNAL SIGTERM
CMD ["helix", "up", "--port", "50051", "--metrics-port", "9464", "--data-dir", "/var/lib/helix", \
     "--generator-dna-dir", "/usr/share/helix/dna", "--oracle-config", "/usr/share/helix/oracles.yaml"]
