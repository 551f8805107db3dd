"""Plain HTTP cache protocols on the HTTP port (`http.cache`, docs/http-cache.md).

- bazel-remote's: GET/PUT/HEAD /ac/HASH and /cas/HASH, optionally under /INSTANCE/ (routes.py);
- ccache's HTTP remote storage: GET/PUT/HEAD/DELETE /PREFIX/KEY in its `layout=` (routes.py);
- Gradle's HTTP build cache: GET/PUT/HEAD /PREFIX/KEY (routes.py).

All of them live on the instances' own CAS and Action Cache, so the same size bounds, eviction and
completeness checks apply as over gRPC: opaque keys (ccache, Gradle) and the hash -> size lookups
the bazel-remote protocol needs are small index records in the Action Cache that point at CAS blobs
(index.py); request bodies are hashed while they stream into the CAS writer (bodies.py).
"""
