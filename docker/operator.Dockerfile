# The operator's Deployment image: `python -m agent_operator` runs the Kopf operator.
#
#   docker build -f docker/operator.Dockerfile -t agent-operator .
#
# BASE: any Debian-like image with python3 (3.11 or later) and its venv module. The default
# is the official image; `make images` builds FROM a base made from Debian's packages
# (hack/images.py), as no registry is reachable there.
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
    HOME=/home/operator

# The locked dependencies, in a layer of their own: a code change does not reinstall them.
COPY requirements/operator.txt /tmp/requirements/
# The user has a name too: Kopf and getpass look it up (a pod sets no $USER).
RUN groupadd --gid 65532 agent-operator \
    && useradd --uid 65532 --gid 65532 --no-log-init --create-home --home-dir /home/operator \
        --shell /usr/sbin/nologin agent-operator \
    && python3 -m venv /opt/venv \
    && pip install --requirement /tmp/requirements/operator.txt

# The code, without dependencies (the lock has them), built by the pinned backend.
COPY requirements/build.txt /tmp/requirements/
COPY pyproject.toml README.md /tmp/src/
COPY agent_contract /tmp/src/agent_contract
COPY agent_operator /tmp/src/agent_operator
COPY agent_runtime /tmp/src/agent_runtime
RUN PIP_CONSTRAINT=/tmp/requirements/build.txt pip install --no-deps /tmp/src \
    && rm -rf /tmp/src /tmp/requirements

WORKDIR /home/operator
# Non-root, numeric so `runAsNonRoot` can verify it (restricted Pod Security Standard). The
# image writes nothing at run time (bytecode was compiled at install): a read-only root works.
USER 65532:65532
ENTRYPOINT ["python", "-m", "agent_operator"]
