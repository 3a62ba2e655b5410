#!/bin/sh
# Debian's Exim for tests/test_interop_exim.py, unpacked into
# tests/interop/exim/unpacked rather than installed: the package would become
# the machine's MTA and conflicts with any other (Postfix, for the benchmarks).
# The tests run the binary with a configuration, spool and logs of their own.
#
# Besides unpacking, this does the two things installing the package would do
# that the binary cannot do without: the libraries it links to, and the user it
# was built to run as (Debian-exim, looked up by name when it starts).
#
# Needs root (or sudo) and apt's package lists (apt-get update).  Running it
# again downloads nothing unless apt offers another version.
set -eu

cd "$(dirname "$0")"

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

package=exim4-daemon-light
user=Debian-exim
version=$(apt-cache policy "$package" | sed -n 's/^ *Candidate: //p')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    echo "install.sh: apt offers no $package (run apt-get update)" >&2
    exit 1
fi

# The libraries among the package's dependencies (the others are Exim's
# scripts and Debian's configuration, which the tests do not use).
missing=""
for library in $(apt-cache show --no-all-versions "$package" |
    sed -n 's/^Depends: //p' | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' | grep '^lib'); do
    if ! dpkg-query -W -f '${Status}\n' "$library" 2>/dev/null | grep -q ' installed$'; then
        missing="$missing $library"
    fi
done
if [ -n "$missing" ]; then
    # $missing unquoted: one word per library
    $sudo apt-get install -y --no-install-recommends $missing
fi

if ! getent group "$user" >/dev/null; then
    $sudo groupadd --system "$user"
fi
if ! getent passwd "$user" >/dev/null; then
    $sudo useradd --system --gid "$user" --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$user"
fi

if [ "$(cat unpacked/VERSION 2>/dev/null)" != "$version" ]; then
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    if [ "$(id -u)" -eq 0 ] && getent passwd _apt >/dev/null; then
        chown _apt "$download"  # apt downloads as _apt when it can
    fi
    (cd "$download" && apt-get download "$package=$version")
    rm -rf unpacked.new
    dpkg-deb -x "$download"/"$package"_*.deb unpacked.new
    # The tests run it as root; no set-user-ID root program stays in a work tree.
    chmod u-s unpacked.new/usr/sbin/exim4
    echo "$version" >unpacked.new/VERSION
    rm -rf unpacked
    mv unpacked.new unpacked
fi

env -i unpacked/usr/sbin/exim4 -C /dev/null -bV | head -n 1
