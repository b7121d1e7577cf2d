# syntax=docker/dockerfile:1
# Build stage: wheels for pdp and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pdp ./pdp
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: slim, non-root, policies and audit as volumes.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/pdp --create-home pdp
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
COPY examples/policies /policies
ENV PDP_LISTEN=0.0.0.0:50051 \
    PDP_POLICY_DIR=/policies \
    PDP_POLICY_STORE=sqlite:/var/lib/pdp/state/policies.sqlite3 \
    PDP_AUDIT_FILE=/var/lib/pdp/audit/audit.jsonl
# Authentication is OFF by default: on 0.0.0.0 anyone who reaches the port may ask for
# decisions (nothing else) and pdp logs AUTHENTICATION_OFF_ON_A_NETWORK_ADDRESS at start.
# Turn it on with a tokens file (sha256 digests, roles per tenant; see the README's
# "Authentication and roles"), mounted read-only:
#   docker run -v $PWD/tokens.yaml:/etc/pdp/tokens.yaml:ro \
#     -e PDP_AUTH_TOKENS_FILE=/etc/pdp/tokens.yaml pdp      (or: pdp serve --auth-tokens-file)
# or mTLS: PDP_TLS_CERT_FILE, PDP_TLS_KEY_FILE, PDP_TLS_CLIENT_CA_FILE, PDP_AUTH_ROLES_FILE.
# With either set, callers without credentials are refused (UNAUTHENTICATED).
# /policies seeds the policy store; the store (lifecycle state) and the audit trail must
# outlive the container.
RUN mkdir -p /var/lib/pdp/state /var/lib/pdp/audit && chown -R pdp /var/lib/pdp
VOLUME ["/policies", "/var/lib/pdp/state", "/var/lib/pdp/audit"]
USER pdp
WORKDIR /var/lib/pdp
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["pdp", "health", "--address", "127.0.0.1:50051", "--timeout", "2"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["pdp"]
CMD ["serve"]
