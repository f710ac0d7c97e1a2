# The worker image: GPU TensorFlow 2.21 and the whole trainer (data tooling included).
# Runs the chief, the workers and the evaluator. Build from the repository root:
#   make images        (docker build -f docker/worker.Dockerfile -t disttrain/worker:0.1.0 .)
# The TensorFlow version matches pyproject.toml's tensorflow-cpu~=2.21.0 (tests/test_images.py).
FROM tensorflow/tensorflow:2.21.0-gpu

# The base image's Python is the system one: let pip install beside its TensorFlow.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/disttrain
COPY docker/requirements.py docker/requirements.py
COPY pyproject.toml README.md ./
COPY disttrain disttrain
COPY launchers launchers
COPY configs configs

# The base image brings GPU TensorFlow: install pyproject's other dependencies (and the
# train and azure extras) at its own version ranges, leaving out tensorflow-cpu, which would
# shadow the GPU build; then the package itself without dependencies.
RUN python docker/requirements.py --extra train --extra azure --without tensorflow-cpu \
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
