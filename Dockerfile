# syntax=docker/dockerfile:1
# runstream processor / api image (docker-compose.yml builds it for both services).
#
# Three stages, so the runtime holds neither node, the sources nor a build toolchain:
#   assets  - `npm ci` for the dashboard's chart library (uPlot, into dashboard/vendor/)
#   wheel   - the runstream wheel, built with those assets in place, as a release is
#   runtime - python slim with runstream[server] installed from that wheel, run as a
#             non-root user
# .dockerignore keeps local state (venvs, node_modules, a local dashboard/vendor) out of
# the context, so the image is built from the sources alone.

ARG PYTHON_VERSION=3.11

FROM node:22-slim AS assets
WORKDIR /src/dashboard
# package.json's postinstall copies uPlot from node_modules into vendor/.
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY runstream runstream
COPY ingest ingest
COPY processor processor
COPY api api
COPY dashboard dashboard
# With the assets present, setup.py's build_py does not look for npm (this stage has none).
COPY --from=assets /src/dashboard/vendor dashboard/vendor
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUNSTREAM_HOME=/data
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/runstream runstream \
 && mkdir -p /data && chown runstream:runstream /data
# The wheel by its path, not by name from an index: the [server] extra of exactly this build.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(echo /wheels/runstream-*.whl)[server]"
USER runstream
WORKDIR /home/runstream
# A named volume mounted at /data starts with the image's /data, owned by runstream.
VOLUME ["/data"]
EXPOSE 8000
# The api's /healthz (503 while ClickHouse is unreachable), with the interpreter the image
# already has (slim has no curl). A processor container (`runstream processor`) serves no
# HTTP by default: its service runs `runstream processor --metrics-port 9108` and sets
# RUNSTREAM_HEALTHCHECK_URL=http://127.0.0.1:9108/metrics, or disables the healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('RUNSTREAM_HEALTHCHECK_URL', 'http://127.0.0.1:8000/healthz'), timeout=4)"]
CMD ["runstream", "api", "--host", "0.0.0.0", "--port", "8000"]
