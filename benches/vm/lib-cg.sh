# Callgrind files out of the guest, for the benches/vm/*-callgrind.sh
# scripts (sourced; the guest has no channel back but its console):
#
#   cg_guest_fns      prints the guest-side (busybox sh) definition of
#                     cg_send FILE: prints FILE (a callgrind file in /tmp)
#                     on the console between CG-FILE-BEGIN NAME and
#                     CG-FILE-END (gzip, base64), then removes it
#   cg_files OUT      writes those files from OUT/console.log to
#                     OUT/cg/NAME

cg_guest_fns() {
    cat <<'FNS'
cg_send() { [ -f "$1" ] || return 0; echo "CG-FILE-BEGIN ${1#/tmp/}"; gzip -c "$1" | base64; echo CG-FILE-END; rm -f "$1"; }
FNS
}

cg_files() {
    local b
    mkdir -p "$1/cg"
    awk -v dir="$1/cg" '
        /CG-FILE-BEGIN / { sub(/.*CG-FILE-BEGIN /, ""); sub(/\r$/, ""); f = dir "/" $0 ".b64"; next }
        /CG-FILE-END/ { if (f) close(f); f = ""; next }
        f { sub(/\r$/, ""); print > f }' "$1/console.log"
    for b in "$1"/cg/*.b64; do
        [ -f "$b" ] || continue
        base64 -d "$b" | gzip -dc > "${b%.b64}" || echo "${b##*/}: not a whole callgrind file" >&2
        rm -f "$b"
    done
}
