# syntax=docker/dockerfile:1
# Three stages: `build` makes the wheel, `functions` is the API with the local function runtime
# (compilers and namespaces need root), and `api` (the default, last) is the API and worker image:
# no compilers, no root, for when functions run on AWS Lambda or not at all.
#   docker build -t taskorch .                                  # the api image
#   docker build --target functions -t taskorch-functions .     # only if you run local functions

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.txt ./
COPY taskorch ./taskorch
# Wheels of exactly what requirements.txt (the lock file) pins, and of taskorch itself with the
# aws extra (boto3): the api image is the one for functions on AWS Lambda.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --requirement requirements.txt \
    && { grep -v '^\.' requirements.txt; echo 'taskorch[aws]'; } > /wheels/install.txt

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    TASKORCH_HOST=0.0.0.0 TASKORCH_PORT=3000 \
    TASKORCH_FUNCTIONS_DIR=/var/lib/taskorch/functions
RUN groupadd --system --gid 10001 taskorch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/taskorch --create-home taskorch
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels --requirement /wheels/install.txt
WORKDIR /var/lib/taskorch
EXPOSE 3000
# /healthz, not /readyz: a Redis outage is not cured by restarting the API.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('PORT') or os.environ['TASKORCH_PORT']), timeout=2)"]
CMD ["taskorch", "serve"]

FROM runtime AS functions
# The local runtime builds java and node functions and runs every call under bubblewrap (its own
# namespaces, uid and seccomp filter), which needs root in the container and Docker's seccomp and
# AppArmor profiles lifted (docker-compose.yml's `functions` service); docs/deploy.md says when.
# Debian's packages track security updates; pinning their versions would only freeze them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends default-jdk-headless nodejs util-linux bubblewrap libseccomp2 \
    && rm -rf /var/lib/apt/lists/*
# hadolint ignore=DL3002
USER 0

FROM runtime AS api
USER 10001:10001
