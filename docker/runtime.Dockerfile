# The image each step Job runs: `agent-runtime run-step`, reading its step from AGENT_STEP
# (or --step-file) and reporting through /dev/termination-log.
#
#   docker build -f docker/runtime.Dockerfile -t agent-runtime .
#
# Custom tools: build FROM this image and `pip install` a package that publishes tools under
# the `agent_runtime.tools` entry-point group.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/agent
COPY --from=wheel /dist /dist
RUN pip install --no-cache-dir /dist/*.whl \
    && rm -rf /dist \
    && mkdir -p /home/agent \
    && chown 65532:65532 /home/agent
WORKDIR /home/agent
# Non-root, numeric so `runAsNonRoot` can verify it (restricted Pod Security Standard).
USER 65532:65532
ENTRYPOINT ["agent-runtime"]
CMD ["run-step"]
