# The mscreen service (CPU inference). GPU image: see docs (issue #7 adds a CUDA base with
# onnxruntime-gpu). Build: docker build -t mscreen .
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MSCREEN_DATA_DIR=/data \
    MSCREEN_ENVIRONMENT=production

# OpenCV's headless wheel still needs libglib at import time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mscreen
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY models ./models
COPY hardware ./hardware
COPY training ./training
COPY migrations ./migrations
RUN pip install ".[cpu,postgres]"

RUN useradd --create-home --uid 10001 mscreen \
    && mkdir -p /data \
    && chown mscreen:mscreen /data
USER mscreen
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4).status == 200 else 1)"

# Migrations run on start (MSCREEN_AUTO_MIGRATE defaults to true).
CMD ["mscreen", "serve", "--host", "0.0.0.0", "--port", "8000"]
