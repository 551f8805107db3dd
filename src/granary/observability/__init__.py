"""Seeing what Granary does: Prometheus metrics, health and readiness, request logs.

- `runarea`: what `granary serve` prepares before it starts server processes (the metrics
  directory shared by them, the HTTP port reserved); light, imported by the supervisor.
- `logs`: text or JSON log lines (`--log-format`); light.
- `metrics`: the Prometheus metrics (prometheus_client in multiprocess mode).
- `interceptor`: one gRPC interceptor that times every call, counts its bytes and logs it.
- `meters`: counting wrappers around the stores, the Action Cache and the job queue.
- `collector`: what is read at scrape time from the queue database and the stores.
- `http`: the aiohttp application of the HTTP port (/metrics, /healthz, /readyz).
- `grpc_services`: grpc.health.v1 and server reflection on the gRPC port.

docs/observability.md describes every setting and metric.
"""
