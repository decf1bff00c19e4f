# syntax=docker/dockerfile:1
# agent_gateway image: the gateway (default entrypoint), the registry CLI (migrations) and the demo's mock
# HTTPS services, built from this repository. Runs as a non-root user.
#   docker build -t agent-gateway:local .
#   docker run --rm agent-gateway:local --help
# compose.yaml uses it for the gateway, the migrations one-shot and the docstore/messaging mocks.

FROM node:24-bookworm-slim AS build
WORKDIR /app
# pkcs11js (registry CLI) is a native addon: node-gyp needs a compiler when no prebuilt binary fits.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make python3 \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY core/ core/
COPY pkcs11/ pkcs11/
COPY gateway/ gateway/
COPY sidecar/ sidecar/
COPY registry-cli/ registry-cli/
COPY bench/ bench/
COPY demo/ demo/
COPY dev-support/ dev-support/
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
RUN groupadd --system --gid 10001 agentgw \
 && useradd --system --uid 10001 --gid agentgw --home-dir /app --no-create-home --shell /usr/sbin/nologin agentgw
COPY --from=build --chown=root:root /app/node_modules/ node_modules/
COPY --from=build --chown=root:root /app/dist/ dist/
COPY --chown=root:root package.json ./
COPY --chown=root:root migrations/ migrations/
USER 10001:10001
EXPOSE 8443 9090
# The entry point itself: its `#!/usr/bin/env -S node ...` line carries the V8 heap flags the gateway is
# measured with (gateway/main.ts says why); the cluster workers inherit them.
ENTRYPOINT ["dist/gateway/main.js"]
CMD ["--config", "/etc/agent-gateway/gateway.toml"]
