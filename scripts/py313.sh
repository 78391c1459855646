#!/usr/bin/env bash
# The test suite under Python 3.13, in a minimal Debian 13 (trixie) root made with debootstrap:
# the package claims Python >= 3.11 and asyncio's internals differ between versions. The root is
# made once in a cache folder outside the clone (BITCOIN_SUPPORT_CACHE, default
# /var/cache/bitcoin_support) and reused, with its venv and pip's downloaded wheels; each run copies
# the checkout in, installs it in the venv and runs pytest with this script's arguments.
# Where that cannot be done (not root, no debootstrap, no network) it says why in one line and
# exits 0: that pass is then skipped, as the README says.
# BITCOIN_SUPPORT_DEBIAN=sid does the same with Debian unstable's Python (3.14 at the time of
# writing), by hand: the test command runs only the 3.13 pass.
set -euo pipefail
cd "$(dirname "$0")/.."
release="${BITCOIN_SUPPORT_DEBIAN:-trixie}"
case $release in
trixie) py=3.13 ;;
sid) py=3.14 ;;
*)
    echo "BITCOIN_SUPPORT_DEBIAN: trixie (Python 3.13) or sid (3.14), not $release" >&2
    exit 2
    ;;
esac
cache="${BITCOIN_SUPPORT_CACHE:-/var/cache/bitcoin_support}"
root="$cache/$release"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What the suite needs (see scripts/setup.sh), plus the release's Python and CPython's own tests.
packages="python3,python3-venv,python3-dev,libpython$py-testsuite,libevent-dev,pkg-config"
packages+=",gcc,g++,make,binutils,util-linux,valgrind,ca-certificates"

skip() {
    echo "== Python $py pass skipped: $*"
    exit 0
}

if [ "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$py" ]; then
    skip "this machine's python3 is $py, which the main pass already runs"
fi
[ "$(id -u)" -eq 0 ] || skip "making a Debian root needs root (debootstrap, chroot, mount)"
if ! command -v debootstrap >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
        >/dev/null 2>&1 || skip "debootstrap is not installed and apt-get could not install it"
fi
mkdir -p "$cache"
exec 9>"$cache/$release.lock"
flock 9 # one run at a time uses the root

mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT
# Mounts left by a run that was killed before its trap ran: off before anything is removed.
awk -v r="$root/" -v n="$root.new/" 'index($2, r) == 1 || index($2, n) == 1 { print $2 }' \
    /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done

# The root: made once; remade if a run was cut short (no stamp) or the package list changed.
stamp="$root/.bitcoin_support-packages"
if [ ! -f "$stamp" ]; then
    echo "== making a Debian $release root in $root (once; a few minutes)"
    rm -rf --one-file-system "$root.new"
    log=$(mktemp)
    if ! debootstrap --variant=minbase --include="$packages" "$release" "$root.new" "$mirror" \
        >"$log" 2>&1; then
        why=$(grep -E '^(E|W):' "$log" | tail -n 1)
        rm -f "$log"
        rm -rf --one-file-system "$root.new"
        skip "debootstrap of Debian $release failed (no network to $mirror?): ${why:-see debootstrap}"
    fi
    rm -f "$log"
    rm -f "$root.new"/var/cache/apt/archives/*.deb # installed; only disk space from here on
    rm -rf --one-file-system "$root"
    mv "$root.new" "$root"
    echo "$packages" >"$stamp"
elif [ "$(cat "$stamp")" != "$packages" ]; then
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq $(echo "$packages" | tr , ' ')" >/dev/null
    echo "$packages" >"$stamp"
fi

# The host's name resolution and CA bundle, so pip inside reaches the index as the host does.
cp /etc/resolv.conf "$root/etc/resolv.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
for m in proc sys dev dev/pts dev/shm; do
    mkdir -p "$root/$m"
    case $m in
    proc) how=(-t proc proc) ;;
    sys) how=(-t sysfs sysfs) ;;
    *) how=(--bind "/$m") ;;
    esac
    mount "${how[@]}" "$root/$m" 2>/dev/null ||
        skip "could not mount /$m in the Debian root (a container without mount rights?)"
    mounted+=("$root/$m")
done

# The checkout (tracked and new files, as sanitize.sh copies it), fresh each run.
rm -rf --one-file-system "$root/src"
mkdir -p "$root/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$root/src"

in_root() {
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
        PIP_CONSTRAINT=/src/scripts/cffi-recommended.txt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        CI="${CI:-}" "$@"
}
log=$(mktemp)
if ! in_root sh -c 'cd /src && { [ -x /venv/bin/python ] || python3 -m venv /venv; } &&
        /venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel &&
        /venv/bin/python -m pip install -q -e ".[test]"' >"$log" 2>&1; then
    cat "$log"
    rm -f "$log"
    exit 1
fi
rm -f "$log"
echo "== the same suite under $(in_root /venv/bin/python -c 'import sys; print("Python", sys.version.split()[0])') (Debian $release root in $root)"
in_root sh -c 'cd /src && exec /venv/bin/python -m pytest -p no:cacheprovider "$@"' pytest "$@"
