# One image for the API and the worker (docker-compose.yml runs both from it).
#   docker build -t dip-restore .                      CUDA PyTorch (PyPI's Linux wheel)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t dip-restore:cpu .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Empty: PyPI, whose torch wheel for Linux bundles CUDA. Set it for another build.
ARG TORCH_INDEX_URL=""

WORKDIR /app

# The README's install steps, in the same order. torch gets its own layer so that
# a code change does not download it again.
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY pyproject.toml ./
COPY dip_engine ./dip_engine
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY stack ./stack
COPY dip_client ./dip_client
RUN pip install .

RUN useradd --create-home --uid 10001 --user-group dip \
    && mkdir -p /data/results /data/var \
    && chown -R dip:dip /data
USER dip
# Named volumes mounted here start as copies of these directories, owned by dip.
ENV DIP_RESULTS_DIR=/data/results \
    DIP_VAR_DIR=/data/var

EXPOSE 8000
# No curl in the slim image; Python is there. The worker overrides this in compose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["dip", "api", "--host", "0.0.0.0", "--port", "8000"]
