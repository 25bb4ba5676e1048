# The operator's Deployment image: `python -m agent_operator` runs the Kopf operator.
#
#   docker build -f docker/operator.Dockerfile -t agent-operator .

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/operator
COPY --from=wheel /dist /dist
RUN pip install --no-cache-dir /dist/*.whl \
    && rm -rf /dist \
    && mkdir -p /home/operator \
    && chown 65532:65532 /home/operator
WORKDIR /home/operator
# Non-root, numeric so `runAsNonRoot` can verify it (restricted Pod Security Standard).
USER 65532:65532
ENTRYPOINT ["python", "-m", "agent_operator"]
