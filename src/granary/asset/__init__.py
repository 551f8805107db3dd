"""The Remote Asset API (build.bazel.remote.asset.v1): URIs and qualifiers -> CAS content."""
