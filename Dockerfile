FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends default-jdk-headless nodejs util-linux \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY taskorch ./taskorch
COPY web ./web
COPY server.py worker.py ./
RUN pip install --no-cache-dir .
EXPOSE 3000
CMD ["taskorch", "serve"]
