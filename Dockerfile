# syntax=docker/dockerfile:1
# Build: docker build -t mcp-resilience-proxy .
# Run:   docker run -p 8080:8080 -e MCP_UPSTREAM_URL=http://host.docker.internal:3000/mcp mcp-resilience-proxy

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim
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
