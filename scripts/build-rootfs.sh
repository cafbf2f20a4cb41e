#!/usr/bin/env bash
# Build a root filesystem directory for celld containers.
#
#   scripts/build-rootfs.sh tiny     OUTDIR   # seconds: static busybox + static bash
#   scripts/build-rootfs.sh bookworm OUTDIR   # minutes: debootstrap minbase (needs a mirror)
#
# The rootfs is assembled in a temp dir next to OUTDIR and moved into place,
# so OUTDIR is either the old complete tree or the new complete tree.  The
# last thing written inside it is OUTDIR/.celld-rootfs-stamp (used by make).
#
# Must run as root (files are chowned, debootstrap needs root).
#
# Environment:
#   CELLD_DEBIAN_MIRROR  mirror URL for the bookworm build (default: the
#                        bookworm mirror configured for apt on this host,
#                        else http://deb.debian.org/debian)
set -euo pipefail

STAMP_NAME=.celld-rootfs-stamp
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

die() { echo "build-rootfs: $*" >&2; exit 1; }
log() { echo "build-rootfs: $*" >&2; }

usage() {
    echo "usage: $0 tiny|bookworm OUTDIR" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
NAME=$1
OUTDIR=$2

case "$NAME" in
    tiny|bookworm) ;;
    *) usage ;;
esac
[[ $(id -u) -eq 0 ]] || die "must run as root (files are chowned to container users)"

# Normalise OUTDIR to an absolute path and refuse obviously dangerous values:
# we rm -rf the old tree.
OUTDIR=${OUTDIR%/}
[[ -n "$OUTDIR" ]] || die "refusing to use / as OUTDIR"
mkdir -p "$(dirname "$OUTDIR")"
OUTDIR="$(cd "$(dirname "$OUTDIR")" && pwd -P)/$(basename "$OUTDIR")"
case "$OUTDIR" in
    /|/bin|/boot|/dev|/etc|/home|/lib|/lib64|/proc|/root|/run|/sbin|/sys|/tmp|/usr|/var)
        die "refusing to use $OUTDIR as OUTDIR" ;;
esac

umask 022

# Unmount anything left mounted below $1 (debootstrap mounts proc/sys in the
# target and may leave them behind if it fails), deepest first.
umount_below() {
    local dir=$1 mnt
    [[ -d "$dir" ]] || return 0
    # field 5 of mountinfo is the mount point (octal-escaped; our paths
    # have no spaces so this is good enough).
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r \
        | while read -r mnt; do
            umount -l "$mnt" 2>/dev/null || true
        done
}

safe_rm() {
    local dir=$1
    [[ -e "$dir" || -L "$dir" ]] || return 0
    umount_below "$dir"
    rm -rf --one-file-system -- "$dir"
}

TMP=$(mktemp -d --suffix=.tmp "${OUTDIR}.XXXXXX")
OLD=""
cleanup() {
    local rc=$?
    safe_rm "$TMP"
    [[ -n "$OLD" ]] && safe_rm "$OLD"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 0755 "$TMP"

# Path of a file shipped by a Debian package, found with dpkg -L so that
# merged-/usr layouts (/bin -> usr/bin) and path changes are handled.
pkg_file() {
    local pkg=$1 base=$2 f
    if dpkg -s "$pkg" >/dev/null 2>&1; then
        while read -r f; do
            if [[ "$(basename "$f")" == "$base" && -f "$f" && -x "$f" ]]; then
                echo "$f"
                return 0
            fi
        done < <(dpkg -L "$pkg")
    fi
    for f in "/bin/$base" "/usr/bin/$base"; do
        [[ -f "$f" && -x "$f" ]] && { echo "$f"; return 0; }
    done
    die "cannot find $base (install the Debian package $pkg, e.g. via 'make deps')"
}

write_stamp() {
    {
        echo "name=$NAME"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "script=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
    } >"$TMP/$STAMP_NAME"
}

# Move $TMP into place as $OUTDIR (replacing any old tree).
install_tree() {
    if [[ -e "$OUTDIR" || -L "$OUTDIR" ]]; then
        OLD=$(mktemp -d --suffix=.tmp "${OUTDIR}.old.XXXXXX")
        mv -T -- "$OUTDIR" "$OLD/tree"
    fi
    mv -T -- "$TMP" "$OUTDIR"
    if [[ -n "$OLD" ]]; then
        safe_rm "$OLD"
        OLD=""
    fi
}

build_tiny() {
    local root=$TMP busybox bash_static applet dest
    busybox=$(pkg_file busybox-static busybox)
    bash_static=$(pkg_file bash-static bash-static)
    log "tiny: busybox=$busybox bash=$bash_static"

    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home/vcap,home/alice,proc,sys,dev,tmp,var/tmp,run}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"

    install -m 0755 "$busybox" "$root/bin/busybox"
    install -m 0755 "$bash_static" "$root/bin/bash"
    ln -s /bin/busybox "$root/bin/sh"

    # One symlink per applet, e.g. usr/bin/env -> /bin/busybox.  Never
    # replace something already there (bin/bash, bin/sh, bin/busybox).
    while read -r applet; do
        applet=${applet#/}
        [[ -n "$applet" ]] || continue
        dest="$root/$applet"
        [[ -e "$dest" || -L "$dest" ]] && continue
        [[ -d "${dest%/*}" ]] || mkdir -p "${dest%/*}"
        ln -s /bin/busybox "$dest"
    done < <("$root/bin/busybox" --list-full)

    # Debian builds its static busybox without adduser/addgroup: shell
    # versions with busybox's options stand in.
    install -m 0755 "$SCRIPT_DIR/../rootfs/tiny/adduser" "$root/usr/sbin/adduser"
    install -m 0755 "$SCRIPT_DIR/../rootfs/tiny/addgroup" "$root/usr/sbin/addgroup"

    cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000:alice:/home/alice:/bin/sh
vcap:x:2000:2000:vcap:/home/vcap:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
    cat >"$root/etc/group" <<'GROUP'
root:x:0:
tty:x:5:
alice:x:1000:
vcap:x:2000:
nogroup:x:65534:
GROUP
    chmod 0644 "$root/etc/passwd" "$root/etc/group"
    : >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"

    chown -R 0:0 "$root"
    chown 2000:2000 "$root/home/vcap"
    chown 1000:1000 "$root/home/alice"
}

# Mirror for debootstrap: the bookworm "deb" source apt is configured with
# here (deb822 *.sources first, then one-line *.list), since the machine may
# only be able to reach that mirror.
detect_mirror() {
    local suite=$1 f uri
    if [[ -n "${CELLD_DEBIAN_MIRROR:-}" ]]; then
        echo "$CELLD_DEBIAN_MIRROR"
        return
    fi
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        uri=$(awk -v suite="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    if (match(line, /^[A-Za-z-]+:/)) {
                        key = tolower(substr(line, 1, RLENGTH - 1))
                        val = substr(line, RLENGTH + 1)
                        gsub(/^[ \t]+|[ \t]+$/, "", val)
                        if (key == "types") types = val
                        else if (key == "uris") uris = val
                        else if (key == "suites") suites = val
                        else if (key == "enabled") enabled = tolower(val)
                    }
                }
                if (enabled == "no") next
                if ((" " types " ") !~ /[ \t]deb[ \t]/) next
                if ((" " suites " ") !~ ("[ \t]" suite "[ \t]")) next
                split(uris, u, /[ \t]+/)
                if (u[1] != "") { print u[1]; exit }
            }' "$f")
        [[ -n "$uri" ]] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        uri=$(awk -v suite="$suite" '
            /^[ \t]*#/ { next }
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f")
        [[ -n "$uri" ]] && { echo "$uri"; return; }
    done
    echo "http://deb.debian.org/debian"
}

build_bookworm() {
    local root=$TMP suite=bookworm mirror http_proxy_apt=""
    command -v debootstrap >/dev/null || die "debootstrap not installed (run 'make deps')"
    mirror=$(detect_mirror "$suite")

    # Honour an apt-configured HTTP proxy if the environment has none.
    if [[ -z "${http_proxy:-}" ]] && command -v apt-config >/dev/null; then
        eval "$(apt-config shell http_proxy_apt Acquire::http::Proxy)"
        if [[ -n "$http_proxy_apt" && "$http_proxy_apt" != DIRECT ]]; then
            export http_proxy=$http_proxy_apt
        fi
    fi

    log "bookworm: debootstrap from $mirror into $root"
    debootstrap --variant=minbase \
        --include=bash,coreutils,python3,netcat-openbsd,curl,ca-certificates \
        "$suite" "$root" "$mirror"
    umount_below "$root"

    chroot "$root" groupadd -g 2000 vcap
    chroot "$root" useradd -u 2000 -g 2000 -m -d /home/vcap -s /bin/bash vcap
    chroot "$root" groupadd -g 1000 alice
    chroot "$root" useradd -u 1000 -g 1000 -m -d /home/alice -s /bin/bash alice

    # Host-specific files and caches do not belong in an image.
    : >"$root/etc/resolv.conf"
    [[ -e "$root/etc/hosts" ]] || : >"$root/etc/hosts"
    rm -f "$root/etc/hostname"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* 2>/dev/null || true
    chmod 0755 "$root"
}

start=$(date +%s.%N)
case "$NAME" in
    tiny) build_tiny ;;
    bookworm) build_bookworm ;;
esac
write_stamp
install_tree
log "$NAME: built $OUTDIR in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1fs", e - s }')"
