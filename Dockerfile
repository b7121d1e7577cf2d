# syntax=docker/dockerfile:1
# Build stage: wheels for pdp and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pdp ./pdp
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: slim, non-root; policies, policy store and audit trail are volumes.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/pdp --create-home pdp
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
# The example policies are a demo, not a production policy set: they are shipped beside the
# image's files, never in the policy directory. Opt in with
#   docker run -e PDP_POLICY_DIR=/usr/share/pdp/examples/policies ...
# and mount your own policies on /policies otherwise (it starts empty: only the built-ins,
# and decisions for tenants nobody created are denied UNKNOWN_TENANT).
COPY examples/policies /usr/share/pdp/examples/policies
# Ports are set here, in the environment, so the HEALTHCHECK below follows them: change
# PDP_LISTEN / PDP_HTTP_LISTEN (not --listen / --http-listen) to move them.
ENV PDP_LISTEN=0.0.0.0:50051 \
    PDP_HTTP_LISTEN=0.0.0.0:50052 \
    PDP_POLICY_DIR=/policies \
    PDP_POLICY_STORE=sqlite:/var/lib/pdp/state/policies.sqlite3 \
    PDP_AUDIT_FILE=/var/lib/pdp/audit/audit.jsonl
# Authentication is OFF by default: on 0.0.0.0 anyone who reaches the port may ask for
# decisions (nothing else) and pdp logs AUTHENTICATION_OFF_ON_A_NETWORK_ADDRESS at start.
# Turn it on with a tokens file (sha256 digests, roles per tenant; see the README's
# "Authentication and roles" and "Docker"), mounted read-only:
#   docker run -v $PWD/tokens.yaml:/etc/pdp/tokens.yaml:ro \
#     -e PDP_AUTH_TOKENS_FILE=/etc/pdp/tokens.yaml pdp      (or: pdp serve --auth-tokens-file)
# or mTLS: PDP_TLS_CERT_FILE, PDP_TLS_KEY_FILE, PDP_TLS_CLIENT_CA_FILE, PDP_AUTH_ROLES_FILE.
# With either set, callers without credentials are refused (UNAUTHENTICATED).
# /policies seeds the policy store; the store (lifecycle state) and the audit trail must
# outlive the container.
RUN mkdir -p /policies /var/lib/pdp/state /var/lib/pdp/audit && chown -R pdp /var/lib/pdp
VOLUME ["/policies", "/var/lib/pdp/state", "/var/lib/pdp/audit"]
USER pdp
WORKDIR /var/lib/pdp
EXPOSE 50051 50052
# Liveness over HTTP /healthz on the PDP_HTTP_LISTEN port (plain HTTP inside the container:
# works with TLS and authentication on the gRPC port). Docker reserves exit code 2, so every
# failure (refused, timeout, 503, a bad setting) is mapped to 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os, urllib.request; h, _, p = os.environ['PDP_HTTP_LISTEN'].rpartition(':'); h = h.strip('[]'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; h = '[' + h + ']' if ':' in h else h; urllib.request.urlopen('http://' + h + ':' + p + '/healthz', timeout=2)" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["pdp"]
CMD ["serve"]
