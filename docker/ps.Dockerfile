# The parameter-server image: CPU-only TensorFlow and the trainer without data or image
# tooling (no tensorflow-datasets, no Pillow, no CUDA): noticeably smaller than the worker
# image. Also runs TensorBoard. Build from the repository root:
#   make images        (docker build -f docker/ps.Dockerfile -t disttrain/ps:0.1.0 .)
FROM python:3.11-slim-bookworm

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/disttrain
COPY docker/requirements.py docker/requirements.py
COPY pyproject.toml README.md ./
COPY disttrain disttrain
COPY launchers launchers
COPY configs configs

# pyproject's dependencies and train extra at their own version ranges (tensorflow-cpu~=2.21.0
# included), minus the data tooling a ps never uses; then the package itself without dependencies.
RUN python docker/requirements.py --extra train --extra azure --without tensorflow-datasets pillow \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps . \
    && rm /tmp/requirements.txt

# Non-root, uid 1000: the pods' securityContext (runAsUser 1000, "restricted" standard).
# A base image may already have a uid-1000 user (Ubuntu 24.04 images ship "ubuntu"): then
# the pods run as that user, with this home, rather than the build failing on useradd.
RUN (getent passwd 1000 >/dev/null \
        || useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin disttrain) \
    && mkdir -p /home/disttrain \
    && chown 1000:1000 /home/disttrain
ENV HOME=/home/disttrain
USER 1000
WORKDIR /home/disttrain
CMD ["disttrain", "task", "--config", "/etc/disttrain/config.yaml"]
