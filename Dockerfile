# syntax=docker/dockerfile:1
# Build: docker build -t mcp-resilience-proxy .
# Run:   docker run -p 8080:8080 -e MCP_UPSTREAM_URL=http://host.docker.internal:3000/mcp mcp-resilience-proxy
#
# Targets (docker build --target NAME). The default, the last stage, is the proxy for HTTP upstreams;
# the others are for stdio upstreams (`command:`): the server runs inside this container as the proxy's
# child (docs/kubernetes.md#a-stdio-server-in-the-sidecar).
#   stdio       the default image plus tini as PID 1 and a home directory. Python stdio servers: bake them
#               into a venv of their own, /opt/servers, on PATH:
#               docker build --target stdio --build-arg PIP_PACKAGES="mcp-server-fetch==2026.10.24" \
#                 -t mcp-resilience-proxy:stdio .      then  command: [mcp-server-fetch]
#   stdio-node  stdio plus Node.js 22 (node, npm, npx). Bake npm servers in (no registry at start):
#               docker build --target stdio-node \
#                 --build-arg NPM_PACKAGES="@modelcontextprotocol/server-everything@2026.8.31" \
#                 -t mcp-resilience-proxy:stdio-node .  then  command: [mcp-server-everything, stdio]
#               or fetch at start: command: [npx, -y, "@modelcontextprotocol/server-everything@2026.8.31"]

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim AS runtime
RUN groupadd --system --gid 10001 proxy \
 && useradd --system --uid 10001 --gid proxy --no-create-home --shell /usr/sbin/nologin proxy
COPY --from=build /opt/venv /opt/venv
COPY config/proxy.yaml /etc/mcp-resilience-proxy/proxy.yaml
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    MCP_PROXY_LISTEN_HOST=0.0.0.0
USER 10001:10001
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["mcp-resilience-proxy", "serve", "--config", "/etc/mcp-resilience-proxy/proxy.yaml"]

FROM runtime AS stdio
USER 0:0
# tini as PID 1, the proxy its child. A stdio child is often a launcher (npx, uvx, sh -c) whose server is
# a grandchild; when the launcher dies first, the kernel hands the grandchild to PID 1. The proxy reaps
# only its own children, so as PID 1 every such orphan would stay a zombie (a process-table slot) for the
# container's life, more with each restart of the child. tini reaps them, and passes SIGTERM to the proxy
# alone (no -g): the proxy drains, then stops each child's process group itself (stdin, SIGTERM, SIGKILL).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.* \
 && rm -rf /var/lib/apt/lists/*
# Python stdio servers in a venv of their own: their dependencies cannot move the proxy's. Pin versions in
# PIP_PACKAGES (pkg==version); the word splitting of $PIP_PACKAGES is meant (several packages).
ARG PIP_PACKAGES=""
RUN if [ -n "$PIP_PACKAGES" ]; then \
      /usr/local/bin/python3 -m venv /opt/servers \
      && /opt/servers/bin/pip install --no-cache-dir $PIP_PACKAGES; \
    fi
# HOME reaches the child (one of the few variables it inherits): servers and npx keep caches there. It
# must exist and be writable; under a read-only root filesystem mount a volume on it (config/k8s/stdio).
RUN mkdir -p /home/proxy && chown 10001:10001 /home/proxy
# /opt/servers/bin first: a child's `python -m server` and the servers' console scripts resolve there (the
# child inherits this PATH); the proxy itself starts by its own name, which only /opt/venv/bin has.
ENV HOME=/home/proxy \
    PATH="/opt/servers/bin:${PATH}"
USER 10001:10001
ENTRYPOINT ["tini", "--", "mcp-resilience-proxy", "serve", "--config", "/etc/mcp-resilience-proxy/proxy.yaml"]

FROM node:22-slim AS node

FROM stdio AS stdio-node
USER 0:0
# Node's official build: one binary plus npm (npx is npm's). It needs only glibc and libstdc++, which the
# Debian base already has (apt uses libstdc++).
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version
ARG NPM_PACKAGES=""
# Versions are pinned where the packages are named: in NPM_PACKAGES (pkg@version).
# hadolint ignore=DL3016
RUN if [ -n "$NPM_PACKAGES" ]; then \
      npm install --global --omit=dev --no-audit --no-fund $NPM_PACKAGES \
      && npm cache clean --force && rm -rf /root/.npm; \
    fi
USER 10001:10001

# The default target: the runtime stage as it is, with no stdio additions (docker build builds only the
# stages it needs, so it neither pulls node nor installs tini).
FROM runtime AS http
