# The mscreen service with GPU inference (onnxruntime-gpu on CUDA 12 + cuDNN 9).
#   docker build -t mscreen .
#   docker compose up          (PostgreSQL + this image, GPU reserved; see docker-compose.yml)
# Without a GPU the same image runs on the CPU: onnxruntime-gpu falls back to its CPU provider
# and /api/v1/health reports the provider actually in use.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS runtime

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MSCREEN_ENVIRONMENT=production \
    MSCREEN_DATA_DIR=/data \
    MSCREEN_MODEL_REPOSITORY=/data/models \
    MSCREEN_ONNX_PROVIDER=auto

# Python 3.12 from Ubuntu 24.04; libglib for OpenCV's headless wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/mscreen
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY cli ./cli
COPY store ./store
COPY models ./models
COPY hardware ./hardware
COPY training ./training
COPY migrations ./migrations
COPY docker/entrypoint.sh /usr/local/bin/mscreen-entrypoint
# gpu = onnxruntime-gpu instead of onnxruntime (never both); postgres = psycopg; fast = numba;
# sila = the SiLA 2 server (`mscreen serve --host 0.0.0.0 --sila`, gRPC on 50052).
RUN pip install ".[gpu,postgres,fast,sila]" \
    && chmod 0755 /usr/local/bin/mscreen-entrypoint

RUN useradd --create-home --uid 10001 mscreen \
    && mkdir -p /data \
    && chown mscreen:mscreen /data
USER mscreen
VOLUME ["/data"]
EXPOSE 8000 50052

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4).status == 200 else 1)"

# Seeds the model repository volume with the bundled model, migrates, then serves.
ENTRYPOINT ["mscreen-entrypoint"]
CMD ["mscreen", "serve", "--host", "0.0.0.0", "--port", "8000"]
