#!/usr/bin/env bash
# Builds Runnel's container image with no registry: from a binary built on this machine and a
# base image made here from this machine's own shared libraries (`docker import`, no pull).
#
#   scripts/docker-image.sh [TAG]        # default TAG: runnel:latest
#
# 1. The base, runnel-base:<hash>: a root filesystem holding exactly the libraries
#    `ldd` lists for the binary (libc, libm, libgcc_s, the loader), /etc/passwd and /etc/group
#    with a `runnel` user (uid 10001), /etc/nsswitch.conf, /tmp and /data. Its tag is a hash of
#    those files, so an unchanged machine reuses it.
# 2. The image: deploy/Dockerfile's `prebuilt` target on that base, with a stripped copy of the
#    binary, built from a small temporary context (the Dockerfile, deploy/rootfs, the binary).
#
# With a registry, `docker build -f deploy/Dockerfile -t runnel .` compiles in a rust image
# instead (deploy/README.md). Environment: RUNNEL_BIN the binary [${CARGO_TARGET_DIR:-target}
# /release/runnel, built with `cargo build --release -p runnel` when missing].
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${1:-runnel:latest}
bin=${RUNNEL_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/runnel}

die() { echo "docker-image: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker not found"
if [[ ! -x $bin ]]; then
  [[ -n ${RUNNEL_BIN:-} ]] && die "RUNNEL_BIN=$bin is not an executable"
  (cd "$repo" && cargo build --release -p runnel)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- the base image ------------------------------------------------------------------------
root=$work/rootfs
mkdir -p "$root/etc" "$root/tmp" "$root/data"
# ldd's lines: "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" and the loader
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
mapfile -t libs < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
((${#libs[@]} > 0)) || die "ldd lists no library for $bin (a static binary needs no base: use FROM scratch)"
for lib in "${libs[@]}"; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"   # the file itself, not the distribution's symlink chain
done
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
runnel:x:10001:10001:runnel:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
runnel:x:10001:
nogroup:x:65534:
GROUP
# Peers are found by name: /etc/hosts (written by Docker and Kubernetes), then DNS. glibc
# 2.34+ has both sources built into libc.so.6.
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"
chown 10001:10001 "$root/data"
hash=$(cd "$root" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
base=runnel-base:$hash
if docker image inspect "$base" >/dev/null 2>&1; then
  echo "docker-image: base $base exists (libraries: ${libs[*]})"
else
  tar --sort=name --mtime=@0 --numeric-owner -C "$root" -c . | docker import - "$base" >/dev/null
  echo "docker-image: imported base $base from ${libs[*]}"
fi

# ---- the image -----------------------------------------------------------------------------
ctx=$work/context
mkdir -p "$ctx/deploy/prebuilt"
cp "$repo/deploy/Dockerfile" "$ctx/deploy/Dockerfile"
cp -a "$repo/deploy/rootfs" "$ctx/deploy/rootfs"
# The line tables (profile.release debug = "line-tables-only") are for backtraces on a
# developer's machine; the image leaves them out.
objcopy --strip-debug "$bin" "$ctx/deploy/prebuilt/runnel" 2>/dev/null || cp "$bin" "$ctx/deploy/prebuilt/runnel"
docker build -f "$ctx/deploy/Dockerfile" --target prebuilt --build-arg "BASE_IMAGE=$base" -t "$tag" "$ctx" \
  >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; die "docker build failed"; }
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "docker-image: built $tag on $base: $((size / 1024 / 1024)) MiB ($size bytes)"
