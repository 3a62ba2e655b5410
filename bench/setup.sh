#!/bin/sh
# Install what the benchmark harness needs, idempotently.
#
# - Postfix, for smtp-source (the load generator), smtp-sink (the C reference
#   server) and the private Postfix instance that delivers to a Maildir.
#   Debconf is preseeded with "No configuration" so that installing it starts
#   no mail system; any master process left running is stopped.
# - aiosmtpd, uvloop and matplotlib in the project's virtualenv.
#
# Usage: sh bench/setup.sh   (as root, or with sudo available)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
venv=${VENV:-$root/.venv}

if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi

if ! command -v smtp-source >/dev/null 2>&1 && [ ! -x /usr/sbin/smtp-source ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends postfix
fi

# Installing the package may have started the system instance: stop it.
# Only the system instance (default config directory) is touched here.
if [ -x /usr/sbin/postfix ] && $sudo /usr/sbin/postfix status >/dev/null 2>&1; then
    $sudo /usr/sbin/postfix stop || true
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled postfix >/dev/null 2>&1; then
    $sudo systemctl disable --now postfix >/dev/null 2>&1 || true
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "aiosmtpd>=1.4" "uvloop>=0.19" "matplotlib>=3.7"

echo "bench setup: ok"
"$venv/bin/python" - <<'PY'
import aiosmtpd, matplotlib, uvloop
print("aiosmtpd", aiosmtpd.__version__, "| uvloop", uvloop.__version__, "| matplotlib", matplotlib.__version__)
PY
/usr/sbin/postconf -d mail_version 2>/dev/null || true
