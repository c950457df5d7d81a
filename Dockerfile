# iotgate image for docker-compose.yml: the CLI, the gateway and Mosquitto's mosquitto_passwd.
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto openssl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY iotgate ./iotgate
COPY certs ./certs
COPY gateway ./gateway
COPY devices ./devices
COPY loadtests ./loadtests
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /iotgate
ENV IOTGATE_HOME=/iotgate
ENTRYPOINT ["iotgate"]
CMD ["--help"]
