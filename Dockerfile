# One image for the server (`granary serve`) and the workers (`granary worker`): the command is the
# container's arguments, e.g. `docker run IMAGE worker --server grpc://granary:8980`. See docs/deploy.md
# ("Containers and Kubernetes"). bubblewrap is installed for the workers' sandbox; whether it can run
# depends on the container runtime allowing user namespaces (the worker's --sandbox auto falls back to
# plain processes, with one warning, when it cannot; --sandbox bwrap refuses to start instead).
FROM python:3.11-slim-bookworm

# tini as PID 1: passes SIGTERM on to granary (which drains) and reaps orphaned processes
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap tini \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md LICENSE /tmp/granary/
COPY src /tmp/granary/src
RUN pip install --no-cache-dir '/tmp/granary[all]' && rm -rf /tmp/granary

# Never root: a worker running as root would run actions as nobody; as this user it runs them as itself.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/granary granary \
    && mkdir -p /var/lib/granary /var/cache/granary-worker /etc/granary \
    && chown granary:granary /var/lib/granary /var/cache/granary-worker
USER granary
WORKDIR /home/granary

# 8980: REAPI (gRPC); 8981: HTTP (/metrics, /healthz, /readyz, the dashboard)
EXPOSE 8980 8981
ENTRYPOINT ["tini", "--", "granary"]
CMD ["serve", "--config", "/etc/granary/granary.yaml", "--data-dir", "/var/lib/granary"]
