# The image each step Job runs: `agent-runtime run-step`, reading its step from AGENT_STEP
# (or --step-file) and reporting through /dev/termination-log. It carries the runtime only
# (agent_runtime and agent_contract, as the distribution runtime/pyproject.toml describes):
# none of the operator's dependencies.
#
#   docker build -f docker/runtime.Dockerfile -t agent-runtime .
#
# BASE: any Debian-like image with python3 (3.11 or later) and its venv module. The default
# is the official image; `make images` builds FROM a base made from Debian's packages
# (hack/images.py), as no registry is reachable there.
#
# Custom tools: build FROM this image and, as USER root, `pip install` (the venv's pip is
# first on PATH) a package that publishes tools under the `agent_runtime.tools` entry-point
# group; then USER 65532:65532 again.
ARG BASE=python:3.11-slim
FROM ${BASE}

# Build-time only: a CA bundle for pip where TLS goes through an intercepting proxy
# (hack/images.py mounts the host's); unset, pip trusts its own bundle.
ARG PIP_CERT
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/agent

# The locked dependencies, in a layer of their own: a code change does not reinstall them.
COPY requirements/runtime.txt /tmp/requirements/
# The user has a name too: getpass and the tools that use it look it up (a pod sets no $USER).
RUN groupadd --gid 65532 agent \
    && useradd --uid 65532 --gid 65532 --no-log-init --create-home --home-dir /home/agent \
        --shell /usr/sbin/nologin agent \
    && python3 -m venv /opt/venv \
    && pip install --requirement /tmp/requirements/runtime.txt

# The code, without dependencies (the lock has them), built by the pinned backend.
COPY requirements/build.txt /tmp/requirements/
COPY runtime/pyproject.toml /tmp/src/pyproject.toml
COPY agent_contract /tmp/src/agent_contract
COPY agent_runtime /tmp/src/agent_runtime
RUN PIP_CONSTRAINT=/tmp/requirements/build.txt pip install --no-deps /tmp/src \
    && rm -rf /tmp/src /tmp/requirements

WORKDIR /home/agent
# Non-root, numeric so `runAsNonRoot` can verify it (restricted Pod Security Standard). The
# image writes nothing at run time (bytecode was compiled at install): a read-only root works.
USER 65532:65532
ENTRYPOINT ["agent-runtime"]
CMD ["run-step"]
