"""The Build Event Service: Bazel's --bes_backend stream stored in SQL, and queries over it.

ingest.py checks and orders what publishers send, store.py keeps it (events per stream,
one summary row per invocation decoded at ingestion so listing builds is one cheap
query), decode.py reads Bazel's payloads, query.py answers QueryEvents with a bounded
regex, cli.py is `granary builds` and `granary build ID`. docs/build-events.md.
"""
