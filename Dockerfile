# syntax=docker/dockerfile:1
# One image for the API (default command) and the worker (`colorizer worker`); see docker-compose.yml.
FROM python:3.11-slim

# TF_EXTRAS=and-cuda installs TensorFlow with its CUDA libraries so the worker can use an NVIDIA
# GPU (it still runs on the CPU without one). For a smaller CPU-only image:
#   docker build --build-arg TF_EXTRAS= .
ARG TF_EXTRAS=and-cuda

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    MALLOC_ARENA_MAX=2 \
    COLORIZER_DATA_DIR=/data \
    COLORIZER_HOST=0.0.0.0 \
    COLORIZER_PORT=8000

WORKDIR /app

# Dependencies first, from pyproject.toml, so a source change does not reinstall TensorFlow.
COPY pyproject.toml ./
RUN python -c "import os, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
extras = os.environ.get('TF_EXTRAS', ''); \
print('\n'.join(d.replace('tensorflow', f'tensorflow[{extras}]', 1) if extras and d.startswith('tensorflow') else d for d in deps))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY cli ./cli
COPY common ./common
COPY inference ./inference
COPY models ./models
COPY recipe ./recipe
COPY service ./service
COPY worker ./worker
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin colorizer \
    && mkdir -p /data \
    && chown colorizer:colorizer /data

USER colorizer
WORKDIR /home/colorizer
# A new named volume mounted here takes this ownership, so the non-root user can write to it.
VOLUME ["/data"]
EXPOSE 8000

CMD ["colorizer", "serve"]
