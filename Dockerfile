# runstream processor / api image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY runstream runstream
COPY ingest ingest
COPY processor processor
COPY api api
COPY dashboard dashboard
RUN pip install --no-cache-dir . \
 && cd dashboard && npm install --no-audit --no-fund --loglevel=error \
 && mkdir -p vendor && cp node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css vendor/
ENV RUNSTREAM_HOME=/data
EXPOSE 8000
CMD ["runstream", "api", "--host", "0.0.0.0"]
