#!/usr/bin/env bash
# Runs CMD inside a Debian 13 (trixie) root, the LibTorch 2.x line:
#   scripts/debian13.sh scripts/test.sh
#   scripts/debian13.sh build/ttq --version
# The root is made once with debootstrap from Debian's packages (minbase; the scripts inside install
# the rest as on any Debian machine) in $TTQ_DEBIAN13_ROOT (default /var/cache/ttq/debian13) and
# reused. Inside, the repository and ../shared appear at the same paths as here, and CMD runs from
# the repository root. build/ and out/ inside are this repository's build-debian13/ and
# out-debian13/: a build folder is never shared between LibTorch versions. The mounts live in a
# private mount namespace and disappear with CMD. Needs root (debootstrap, chroot, mounts).
# Exit status: CMD's; 1 when the root cannot be made; 2 on a usage error.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${TTQ_DEBIAN13_ROOT:-/var/cache/ttq/debian13}
suite=trixie

fail() { echo "debian13.sh: $*" >&2; exit 1; }
(($#)) || { echo "usage: scripts/debian13.sh CMD [ARGS...]" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap, chroot and bind mounts); run it as root or with sudo"

# The Debian mirror this machine's apt already uses, unless TTQ_DEBIAN_MIRROR names one.
host_mirror() {
  local uri
  uri=$(grep -hoE '^URIs: *[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')
  [[ -n $uri ]] || uri=$(grep -hoE '^deb +[^ ]+/debian/? ' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}')
  echo "$uri"
}

make_root() {
  local mirror=${TTQ_DEBIAN_MIRROR:-$(host_mirror)} log="$root.debootstrap.log"
  [[ -n $mirror ]] || fail "no Debian mirror in /etc/apt; set TTQ_DEBIAN_MIRROR"
  if ! command -v debootstrap >/dev/null; then
    echo "debian13.sh: installing debootstrap" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; } >&2 \
      || fail "cannot install debootstrap (no network?)"
  fi
  echo "debian13.sh: creating the Debian 13 root in $root (once; a few minutes)" >&2
  rm -rf "$root.partial"
  mkdir -p "$(dirname "$root")"
  if ! debootstrap --variant=minbase "$suite" "$root.partial" "$mirror" >"$log" 2>&1; then
    rm -rf "$root.partial"
    fail "debootstrap $suite from $mirror failed (no network?); see $log"
  fi
  # apt inside resolves names as this machine does.
  cp /etc/resolv.conf "$root.partial/etc/resolv.conf"
  mv "$root.partial" "$root"
}

mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
[[ -x $root/usr/bin/apt-get ]] || make_root
cp /etc/resolv.conf "$root/etc/resolv.conf"
exec 9>&-  # several commands may run inside at once once the root exists

shared=$(cd "$repo/.." && pwd)/shared
mkdir -p "$repo/build-debian13" "$repo/out-debian13" "$repo/build" "$repo/out"
# shellcheck disable=SC2016  # expanded by the inner shell
exec unshare --mount --propagation private bash -euo pipefail -c '
  root=$1 repo=$2 shared=$3; shift 3
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount --rbind /sys "$root/sys"
  mkdir -p "$root$repo"
  mount --bind "$repo" "$root$repo"
  mount --bind "$repo/build-debian13" "$root$repo/build"
  mount --bind "$repo/out-debian13" "$root$repo/out"
  if [[ -d $shared ]]; then mkdir -p "$root$shared"; mount --bind "$shared" "$root$shared"; fi
  exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd \"\$0\" && exec \"\$@\"" "$repo" "$@"
' debian13 "$root" "$repo" "$shared" "$@"
