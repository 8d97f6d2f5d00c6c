#!/usr/bin/env bash
# The .deb as installed (issue 13, item 8). From the dev binary that is
# already built (target/debug/relay-edge; nothing is compiled), this builds an
# "old" and a "new" package (same binary, higher version), then, as root (or
# with passwordless sudo):
#   1. installs the old one: the relay-edge system user and group, the binary,
#      the config as a 0640 root:relay-edge conffile, the unit (and its
#      enable symlink), `systemd-analyze verify` on the installed unit;
#   2. edits the config as an operator would, runs the unit's ExecStartPre and
#      ExecStart (read from the installed unit) as its User/Group with its
#      NoNewPrivileges, capabilities, PrivateTmp and (where the host allows)
#      LimitNOFILE, between two demo relays, and checks that it serves and
#      keeps session alice on one relay;
#   3. upgrades to the new package while it runs (the local config edit must
#      survive), hands over to the new /usr/bin/relay-edge with SIGUSR2 as the
#      unit's upgrade path does, and requires every request during the
#      hand-over to succeed on alice's relay;
#   4. stops it (SIGTERM), purges the package and checks what is left.
# Ports 127.0.0.1:8080, 9001, 9002 and 9900 (the shipped config's) must be
# free. It never touches a relay-edge package it did not install (a leftover
# of an earlier run of this script is recognised by its version, *~pkgtest*).
#
# Without systemd as PID 1 this leaves untested:
#   - the unit under systemd itself: Type=notify readiness and MAINPID
#     following across an upgrade (tests/it/upgrade.rs covers the
#     notifications), Restart=, the timeouts, RuntimeDirectory=;
#   - the sandboxing directives that only systemd applies: ProtectSystem,
#     ProtectHome, PrivateDevices, ProtectKernel*, ProtectControlGroups,
#     RestrictAddressFamilies, RestrictNamespaces, LockPersonality,
#     MemoryDenyWriteExecute, SystemCallArchitectures (here: only User/Group,
#     NoNewPrivileges, the capability sets, PrivateTmp for /tmp and
#     LimitNOFILE are emulated, with setpriv, unshare and ulimit);
#   - `systemctl start/stop/reload` (ExecReload's SIGHUP under systemd);
#   - postinst's own hand-over (`systemctl show -p MainPID` + SIGUSR2, which
#     runs only when /run/systemd/system exists): this script sends the same
#     SIGUSR2 itself;
#   - that the enable symlink starts the service at boot, and journald (the
#     log's priority prefixes under JOURNAL_STREAM).
#
# shellcheck disable=SC2015,SC2016  # `a && b || die`; checks are eval'd strings
set -euo pipefail
umask 022

SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."
REPO=$PWD

PKG=relay-edge
MARK='~pkgtest'              # in the versions of the packages this script builds
OLD_REV='1~pkgtest1'
NEW_REV='1~pkgtest2'
PROXY=127.0.0.1:8080         # the shipped config's addresses (checked below)
ADMIN=127.0.0.1:9900
RELAY_A=127.0.0.1:9001
RELAY_B=127.0.0.1:9002
PID_FILE=/tmp/relay-edge.pid
UPGRADE_SOCK=/tmp/relay-edge-upgrade.sock
CONF=/etc/relay-edge/relay-edge.yaml
BIN=/usr/bin/relay-edge
DEMO="$REPO/target/debug/relay-edge-demo-upstream"
LOCAL_EDIT='# package test: a local edit, which a package upgrade must keep'
SHIPPED_EDIT='# package test: the newer package ships this line'

now_ms() { local t=${EPOCHREALTIME/./}; echo $((10#$t / 1000)); }

# ---------------------------------------------------------------- results
WORK="" RESULTS="" START_MS="" FINISHED=0 INSTALLED_BY_US=0 PRIVATE_TMP=0
RELAYS_PID="" EDGE_PID="" NEXT_PID="" LOOP_PID="" USER_EXISTED=""

record() {
  printf '%s\t%s\n' "$1" "$2" >>"$RESULTS"
  printf '%-4s %s\n' "$1" "$2"
}
pass() { record PASS "$*"; }
fail() { record FAIL "$*"; }
skip() { record SKIP "$*"; }
info() { record INFO "$*"; }
die() { record FAIL "$*"; exit 1; }
check() {
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
stage() { printf '\n== %s\n' "$*"; }

# wait_until SECONDS CMD...: CMD every 0.1 s until it succeeds; 1 at the deadline.
wait_until() {
  local deadline=$(($(now_ms) + $1 * 1000))
  shift
  until "$@"; do
    (($(now_ms) < deadline)) || return 1
    sleep 0.1
  done
}

# A process that has exited (or is a zombie no one reaped yet).
gone() {
  local state
  [ -e "/proc/$1" ] || return 0
  state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 0
  [ -z "$state" ] || [ "$state" = Z ]
}
alive() { ! gone "$1"; }

# stop_pid PID [SECONDS]: SIGTERM, then SIGKILL after the deadline.
stop_pid() {
  [ -n "$1" ] && alive "$1" || return 0
  kill -TERM "$1" 2>/dev/null || true
  wait_until "${2:-15}" gone "$1" || { kill -KILL "$1" 2>/dev/null || true; wait_until 5 gone "$1" || true; }
}

pkg_status() { dpkg-query -W -f='${db:Status-Abbrev}|${Version}' "$PKG" 2>/dev/null || true; }
pkg_present() { local s; s=$(pkg_status); [ -n "$s" ] && [ "${s:1:1}" != n ]; }

# The shipped config's ports: any listener on them, on any address, is in the way.
ports_free() {
  local addr port
  busy=""
  for addr in "$PROXY" "$ADMIN" "$RELAY_A" "$RELAY_B"; do
    port=${addr##*:}
    if [ -n "$(ss -Hltn "sport = :$port")" ]; then
      busy+=" $port ($(ss -Hltnp "sport = :$port" | grep -o 'users:.*' | head -1))"
    fi
  done
  [ -z "$busy" ]
}

show_log() {
  [ -s "$1" ] || return 0
  printf -- '--- last lines of %s\n' "$1"
  tail -n 25 "$1" | sed 's/^/    /'
}

finish() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  if [ -n "$LOOP_PID" ]; then
    touch "$WORK/loop.stop"
    wait_until 15 gone "$LOOP_PID" || kill "$LOOP_PID" 2>/dev/null
  fi
  stop_pid "$NEXT_PID"
  stop_pid "$EDGE_PID"
  stop_pid "$RELAYS_PID"
  if [ "$INSTALLED_BY_US" = 1 ] && pkg_present; then
    if dpkg --purge "$PKG" >"$WORK/dpkg-cleanup.log" 2>&1 </dev/null; then
      info "cleanup: purged the $PKG package this run installed"
    else
      record FAIL "cleanup: dpkg --purge $PKG failed (see $WORK/dpkg-cleanup.log)"
    fi
  fi
  if [ "$PRIVATE_TMP" = 0 ] && [ "$INSTALLED_BY_US" = 1 ]; then
    rm -f "$PID_FILE" "$UPGRADE_SOCK"
  fi
  local fails=0 passes=0 skips=0
  if [ -n "$RESULTS" ] && [ -f "$RESULTS" ]; then
    fails=$(grep -c '^FAIL' "$RESULTS")
    passes=$(grep -c '^PASS' "$RESULTS")
    skips=$(grep -c '^SKIP' "$RESULTS")
  fi
  if [ "$rc" != 0 ] || [ "$FINISHED" != 1 ] || [ "$fails" != 0 ]; then
    [ "$fails" != 0 ] || { record FAIL "the script stopped early (exit $rc)"; fails=1; }
    for f in "$WORK"/*.log; do show_log "$f"; done
  fi
  printf '\n== summary\n'
  [ -f "$RESULTS" ] && sed 's/\t/ /' "$RESULTS"
  local took=$((($(now_ms) - START_MS) / 1000))
  if [ "$fails" = 0 ]; then
    printf '\nPACKAGE TEST: PASS (%s checks passed, %s skipped) in %ss\n' "$passes" "$skips" "$took"
    [ "${PKGTEST_KEEP:-0}" = 1 ] || rm -rf "$WORK"
    exit 0
  fi
  if compgen -G "$WORK/*.log" >/dev/null; then
    printf '\nPACKAGE TEST: FAIL (%s failed, %s passed, %s skipped) in %ss; logs kept in %s\n' \
      "$fails" "$passes" "$skips" "$took" "$WORK"
  else
    printf '\nPACKAGE TEST: FAIL (%s failed, %s passed, %s skipped) in %ss\n' "$fails" "$passes" "$skips" "$took"
    rm -rf "$WORK"
  fi
  exit 1
}

# ---------------------------------------------------------------- phase 1
# As whoever runs it: the tools, the package state, the two packages. Then,
# unless root, again under sudo for the rest.
if [ "${1:-}" = --as-root ]; then
  WORK=$2 START_MS=$3
  RESULTS="$WORK/results"
else
  START_MS=$(now_ms)
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/relay-edge-pkgtest.XXXXXX")
  chmod 755 "$WORK"
  RESULTS="$WORK/results"
  : >"$RESULTS"
  trap finish EXIT
  trap 'exit 130' INT TERM HUP

  stage "0. prerequisites"
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=sudo
  else
    die "needs root: run it as root or with passwordless sudo (sudo -n true failed)"
  fi
  for tool in cargo dpkg dpkg-deb dpkg-query curl setpriv ss pgrep sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
  done
  cargo deb --version 2>/dev/null | grep -q '3\.8\.0' ||
    die "cargo-deb 3.8.0 is needed: cargo install cargo-deb --locked --version 3.8.0 (scripts/test.sh installs it)"
  [ -x target/debug/relay-edge ] || die "target/debug/relay-edge is missing: build it first (cargo build --locked --bins)"
  [ -x "$DEMO" ] || die "$DEMO is missing: build it first (cargo build --locked --bins)"
  status=$(pkg_status)
  if pkg_present && [[ "$status" != *"$MARK"* ]]; then
    die "a $PKG package is installed (${status%%|*} ${status#*|}), not by this script: not touching it; purge it or use another machine"
  fi
  # (Checked again as root, once leftovers of an earlier run are gone.)
  ports_free || leftover_ports=1
  leftover=""
  pkg_present && leftover=" (a leftover of this script is, to be purged: ${status#*|})"
  if [ "${leftover_ports:-0}" = 1 ] && [ -z "$leftover" ]; then
    die "ports in use:$busy; the installed config needs 8080, 9001, 9002 and 9900 free"
  fi
  pass "tools present; no foreign $PKG package installed$leftover"

  stage "1. build the packages (cargo deb --no-build --profile dev: the dev binary as built, nothing compiled)"
  for which in old new; do
    rev=$OLD_REV
    [ "$which" = new ] && rev=$NEW_REV
    mkdir -p "$WORK/$which"
    if ! cargo deb --no-build --profile dev --fast -q -o "$WORK/$which" --deb-revision "$rev" \
      >"$WORK/cargo-deb-$which.log" 2>&1; then
      die "cargo deb ($which, revision $rev) failed"
    fi
  done
  OLD_DEB=$(echo "$WORK"/old/*.deb)
  BUILT_NEW=$(echo "$WORK"/new/*.deb)
  [ -f "$OLD_DEB" ] && [ -f "$BUILT_NEW" ] || die "cargo deb wrote no .deb"
  OLD_VERSION=$(dpkg-deb -f "$OLD_DEB" Version)
  NEW_VERSION=$(dpkg-deb -f "$BUILT_NEW" Version)
  check "versions: old $OLD_VERSION < new $NEW_VERSION" dpkg --compare-versions "$NEW_VERSION" gt "$OLD_VERSION"
  packed_bin() { dpkg-deb --fsys-tarfile "$1" | tar -xOf - ./usr/bin/relay-edge | sha256sum | cut -c1-16; }
  old_sum=$(packed_bin "$OLD_DEB")
  new_sum=$(packed_bin "$BUILT_NEW")
  if [ "$old_sum" = "$new_sum" ]; then
    info "the newer package holds the same binary as the older one (sha256 $old_sum...): only the package version is higher"
  else
    info "the two packages hold different binaries (target/debug/relay-edge changed between the builds)"
  fi
  # The newer package ships a changed config too, so that the upgrade meets
  # dpkg's "changed locally and in the package" case, where --force-confold
  # decides. cargo deb takes the config from conf/, which this script does
  # not edit: the .deb is repacked with one more comment line.
  dpkg-deb -R "$BUILT_NEW" "$WORK/new-tree"
  printf '%s\n' "$SHIPPED_EDIT" >>"$WORK/new-tree$CONF"
  NEW_DEB="$WORK/$(basename "$BUILT_NEW" .deb)+repacked.deb"
  dpkg-deb --root-owner-group -Zgzip -z1 -b "$WORK/new-tree" "$NEW_DEB" >/dev/null
  rm -rf "$WORK/new-tree"
  listing() { dpkg-deb --fsys-tarfile "$1" | tar -tv --numeric-owner -f - | awk '$6 != "./" {print $1, $2, $6}' | sort; }
  check "the repacked newer package keeps every path, mode and owner of cargo deb's" \
    cmp -s <(listing "$BUILT_NEW") <(listing "$NEW_DEB")
  printf 'OLD_DEB=%q\nNEW_DEB=%q\nOLD_VERSION=%q\nNEW_VERSION=%q\n' \
    "$OLD_DEB" "$NEW_DEB" "$OLD_VERSION" "$NEW_VERSION" >"$WORK/debs.env"

  if [ -n "$SUDO" ]; then
    trap - EXIT
    exec sudo -n -- "$BASH" "$SELF" --as-root "$WORK" "$START_MS"
  fi
fi

# ---------------------------------------------------------------- phase 2 (root)
[ "$(id -u)" -eq 0 ] || { echo "package-test: --as-root is for the script itself" >&2; exit 2; }
trap finish EXIT
trap 'exit 130' INT TERM HUP
# shellcheck source=/dev/null
. "$WORK/debs.env"
RUN_ID=$$

# A process this script started carries RELAY_EDGE_PKGTEST=<the PID of the
# run that started it> in its environment: the run's, if that still runs.
started_by() { tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | sed -n 's/^RELAY_EDGE_PKGTEST=//p'; }

run_dpkg() { # run_dpkg LOG ARGS...: waits (up to 120 s) for another dpkg/apt to finish
  local log=$1 deadline=$(($(now_ms) + 120000))
  shift
  while :; do
    DEBIAN_FRONTEND=noninteractive dpkg "$@" >"$log" 2>&1 </dev/null && return 0
    grep -qi 'locked by another process' "$log" && (($(now_ms) < deadline)) || return 1
    sleep 1
  done
}

stage "2. before installing"
for pid in $( (pgrep -u "$PKG" 2>/dev/null || true; grep -lsaz '^RELAY_EDGE_PKGTEST=' /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3) | sort -un); do
  [ "$pid" != $$ ] || continue
  run=$(started_by "$pid")
  if [ -n "$run" ] && grep -qa package-test "/proc/$run/cmdline" 2>/dev/null; then
    die "another run of this script (pid $run) is in progress"
  elif [ -n "$run" ]; then
    stop_pid "$pid"
    info "stopped process $pid, a leftover of an earlier run of this script"
  elif [ "$(stat -c %U "/proc/$pid" 2>/dev/null)" = "$PKG" ]; then
    die "process $pid runs as the $PKG user and was not started by this script: stop it first"
  fi
done
status=$(pkg_status)
if pkg_present; then
  if [[ "$status" == *"$MARK"* ]]; then
    run_dpkg "$WORK/dpkg-leftover.log" --purge "$PKG" || die "cannot purge the leftover $PKG ${status#*|}"
    info "purged $PKG ${status#*|}, a leftover of an earlier run of this script"
  else
    die "a $PKG package is installed (${status%%|*} ${status#*|}), not by this script: not touching it"
  fi
fi
ports_free || die "ports in use:$busy; the installed config needs 8080, 9001, 9002 and 9900 free"
pass "ports 8080, 9001, 9002, 9900 are free"
if unshare --mount --propagation private true 2>/dev/null; then
  PRIVATE_TMP=1
  info "the edge gets a private /tmp (a mount namespace), as the unit's PrivateTmp=true gives it"
else
  for f in "$PID_FILE" "$UPGRADE_SOCK"; do
    [ ! -e "$f" ] || die "no private /tmp here (unshare --mount fails) and $f exists: remove it if no relay-edge runs"
  done
  info "no private /tmp here (unshare --mount fails): the edge uses the host's /tmp"
fi
if getent passwd "$PKG" >/dev/null; then
  USER_EXISTED=1
  info "the $PKG user exists already (an earlier install; Debian keeps system users on purge)"
else
  USER_EXISTED=0
fi

stage "3. install the old package ($OLD_VERSION)"
INSTALLED_BY_US=1
run_dpkg "$WORK/dpkg-install.log" -i "$OLD_DEB" || die "dpkg -i $OLD_DEB failed"
pass "dpkg -i $(basename "$OLD_DEB")"
status=$(pkg_status)
check "dpkg status: ${status%%|*} $OLD_VERSION" test "$status" = "ii |$OLD_VERSION"

IFS=: read -r _ _ uid gid _ home shell <<<"$(getent passwd "$PKG")" || die "no $PKG user after the install"
sys_max=$(awk '$1 == "SYS_UID_MAX" {print $2}' /etc/login.defs 2>/dev/null)
sys_max=${sys_max:-999}
how="created by postinst"
[ "$USER_EXISTED" = 0 ] || how="already there"
check "user $PKG ($how): system uid $uid (<= $sys_max), shell $shell, home $home (not created)" \
  eval '[ "$uid" -le "$sys_max" ] && [ "$shell" = /usr/sbin/nologin ] && [ "$home" = /nonexistent ] && [ ! -e /nonexistent ]'
check "group $PKG exists and is the user's primary group (gid $gid)" \
  test "$(getent group "$PKG" | cut -d: -f3)" = "$gid"
check "$BIN: root:root 755" test "$(stat -c '%U:%G %a' "$BIN")" = "root:root 755"
version_line=$("$BIN" --version 2>&1 || true)
check "$BIN --version: $version_line (upstream version ${OLD_VERSION%%-*})" test "$version_line" = "relay-edge ${OLD_VERSION%%-*}"
check "$CONF: root:$PKG 640" test "$(stat -c '%U:%G %a' "$CONF")" = "root:$PKG 640"
check "$CONF is a conffile of the package" eval 'dpkg-query -W -f="\${Conffiles}" "$PKG" | grep -q "^ $CONF "'
check "a user outside the $PKG group cannot read $CONF (it may hold a Redis password)" \
  eval '! setpriv --reuid=nobody --regid=nogroup --clear-groups cat "$CONF" >/dev/null 2>&1'
UNIT=$(dpkg -L "$PKG" | grep -E '^(/usr)?/lib/systemd/system/relay-edge\.service$' | head -1 || true)
[ -n "$UNIT" ] && [ -f "$UNIT" ] || die "no relay-edge.service under /usr/lib/systemd/system or /lib/systemd/system"
pass "unit installed: $UNIT"
check "the installed unit is the repository's systemd/relay-edge.service" cmp -s "$UNIT" systemd/relay-edge.service
WANTS=/etc/systemd/system/multi-user.target.wants/relay-edge.service
if command -v deb-systemd-helper >/dev/null; then
  check "enabled (the package's deb-systemd-helper enable): $WANTS -> $(readlink "$WANTS" || echo none)" test -L "$WANTS"
else
  skip "enable symlink: deb-systemd-helper (init-system-helpers) is not installed"
fi
if command -v systemd-analyze >/dev/null; then
  # verify loads the unit in a test manager: directives, the ExecStart
  # binaries, the dependencies. It needs no systemd as PID 1.
  if systemd-analyze verify "$UNIT" >"$WORK/verify.log" 2>&1 && [ ! -s "$WORK/verify.log" ]; then
    pass "systemd-analyze verify $UNIT: no complaint"
  else
    fail "systemd-analyze verify $UNIT: $(head -3 "$WORK/verify.log" | tr '\n' ' ')"
  fi
else
  skip "systemd-analyze verify: systemd-analyze is not installed"
fi
cfg_has() { grep -Eq "$1" "$CONF"; }
check "the shipped config serves $PROXY, relays $RELAY_A and $RELAY_B, admin $ADMIN, pid file $PID_FILE" eval '
  cfg_has "^  - addr: $PROXY( |$)" && cfg_has "^    addr: $RELAY_A( |$)" && cfg_has "^    addr: $RELAY_B( |$)" &&
  cfg_has "^  listen: $ADMIN( |$)" && cfg_has "^  pid_file: $PID_FILE( |$)" && cfg_has "^  upgrade_sock: $UPGRADE_SOCK( |$)"'
[ "$(grep -c '^FAIL' "$RESULTS")" = 0 ] || die "the installed package is not as expected: not starting it"

stage "4. configure and start it as the unit does"
# The operator's edit (the README's order: edit, --check, start): the local
# change the upgrade must keep. The shipped balance (least_loaded) stays:
# without redis the affinity table lives in the process, and the SIGUSR2
# hand-over below must carry it to the new process, or alice could move.
printf '%s\n' "$LOCAL_EDIT" >>"$CONF"
check "local edit of $CONF: a comment" eval 'grep -qxF "$LOCAL_EDIT" "$CONF"'

unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -1; }
unit_argv() { # an Exec line's words, without systemd's prefixes (-@:+!)
  local line
  line=$(unit_value "$1")
  while [[ "$line" == [-@:+!]* ]]; do line=${line:1}; done
  [[ "$line" != *[\'\"\$%\\]* ]] || return 1
  echo "$line"
}
pre_line=$(unit_argv ExecStartPre) || die "ExecStartPre uses quoting or specifiers this script does not emulate"
start_line=$(unit_argv ExecStart) || die "ExecStart uses quoting or specifiers this script does not emulate"
read -r -a PRE <<<"$pre_line"
read -r -a START <<<"$start_line"
UNIT_USER=$(unit_value User)
UNIT_GROUP=$(unit_value Group)
[ -n "$UNIT_USER" ] && [ -n "$UNIT_GROUP" ] && [ "${#START[@]}" -gt 0 ] || die "the unit lacks User, Group or ExecStart"
caps=$(unit_value AmbientCapabilities | tr '[:upper:]' '[:lower:]' | sed 's/cap_//g; s/ \+/,+/g')
bound=$(unit_value CapabilityBoundingSet | tr '[:upper:]' '[:lower:]' | sed 's/cap_//g; s/ \+/,+/g')
SETPRIV=(setpriv --reuid="$UNIT_USER" --regid="$UNIT_GROUP" --init-groups)
[ "$(unit_value NoNewPrivileges)" != true ] || SETPRIV+=(--no-new-privs)
[ -z "$bound" ] || SETPRIV+=(--bounding-set="-all,+$bound")
[ -z "$caps" ] || SETPRIV+=(--inh-caps="-all,+$caps" --ambient-caps="-all,+$caps")
nofile=$(unit_value LimitNOFILE)
hard=$(ulimit -Hn)
if [ -z "$nofile" ]; then
  nofile=$(ulimit -Sn)
elif [ "$hard" != unlimited ] && [ "$nofile" -gt "$hard" ]; then
  info "LimitNOFILE=$nofile is above this host's hard limit ($hard, and no CAP_SYS_RESOURCE to raise it): the edge gets $hard"
  nofile=$hard
fi
SERVICE_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  HOME="$home" USER="$UNIT_USER" LOGNAME="$UNIT_USER" SHELL="$shell" RELAY_EDGE_PKGTEST="$RUN_ID")
# as_service CMD...: in the unit's user, group, privileges, limits, working
# directory (/) and, with PRIVATE_TMP, a /tmp of its own. It execs: call it
# in a subshell, `(as_service ...)`, or in the background, whose $! is then
# the command's PID.
as_service() {
  if [ "$PRIVATE_TMP" = 1 ]; then
    exec "${SERVICE_ENV[@]}" unshare --mount --propagation private -- sh -c \
      'mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp && ulimit -n "$1" && shift && cd / && exec "$@"' \
      sh "$nofile" "${SETPRIV[@]}" -- "$@"
  else
    exec "${SERVICE_ENV[@]}" sh -c 'ulimit -n "$1" && shift && cd / && exec "$@"' sh "$nofile" "${SETPRIV[@]}" -- "$@"
  fi
}
info "as the unit: ${SETPRIV[*]} -- ${START[*]} (ulimit -n $nofile, cwd /, clean environment)"
if [ "${#PRE[@]}" -gt 0 ]; then
  pre() { (as_service "${PRE[@]}") >"$WORK/execstartpre.log" 2>&1; }
  check "ExecStartPre as $UNIT_USER: ${PRE[*]} (it can read its 640 config)" pre
fi

env RELAY_EDGE_PKGTEST="$RUN_ID" "$DEMO" "$RELAY_A" "$RELAY_B" >"$WORK/relays.log" 2>&1 &
RELAYS_PID=$!
listening() { [ -n "$(ss -Hltn "sport = :${1##*:}")" ]; }
wait_until 10 eval 'listening "$RELAY_A" && listening "$RELAY_B" || gone "$RELAYS_PID"' && alive "$RELAYS_PID" ||
  die "the demo relays did not listen on $RELAY_A and $RELAY_B within 10 s"
pass "demo relays relay-a on $RELAY_A and relay-b on $RELAY_B (pid $RELAYS_PID)"

as_service "${START[@]}" >"$WORK/edge.log" 2>&1 &
EDGE_PID=$!
started=$(now_ms)
ready() { curl -fsS -o /dev/null --max-time 2 "http://$ADMIN/readyz" 2>/dev/null; }
wait_until 60 eval 'ready || gone "$EDGE_PID"' && alive "$EDGE_PID" ||
  die "the edge (pid $EDGE_PID) was not ready on http://$ADMIN/readyz within 60 s (the unit's TimeoutStartSec)"
pass "ready: /readyz 200 after $(($(now_ms) - started)) ms (pid $EDGE_PID)"

proc_field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
pid_file_of() { if [ "$PRIVATE_TMP" = 1 ]; then cat "/proc/$1/root$PID_FILE"; else cat "$PID_FILE"; fi 2>/dev/null; }
check "runs as $UNIT_USER:$UNIT_GROUP, NoNewPrivs, capabilities: ambient net_bind_service only, open files $nofile" eval '
  [ "$(proc_field "$EDGE_PID" Uid)" = "$uid" ] && [ "$(proc_field "$EDGE_PID" Gid)" = "$gid" ] &&
  [ "$(proc_field "$EDGE_PID" NoNewPrivs)" = 1 ] && [ "$(proc_field "$EDGE_PID" CapAmb)" = 0000000000000400 ] &&
  [ "$(proc_field "$EDGE_PID" CapEff)" = 0000000000000400 ] &&
  [ "$(awk "/^Max open files/ {print \$4}" "/proc/$EDGE_PID/limits")" = "$nofile" ]'
check "it writes its pid file once ready: $PID_FILE names $EDGE_PID" \
  test "$(pid_file_of "$EDGE_PID")" = "$EDGE_PID"
# shellcheck disable=SC2034  # read by the eval below
stats=$(curl -fsS --max-time 5 "http://$ADMIN/api/stats" || true)
check "/api/stats: ready, both relays healthy" eval '
  grep -Eq "\"ready\": *true" <<<"$stats" && [ "$(grep -Eo "\"healthy\": *true" <<<"$stats" | wc -l)" = 2 ]'

alice() { # prints "CODE RELAY OUTCOME"
  curl -sS -o /dev/null --max-time 10 -w '%{http_code} %header{x-upstream} %header{x-relay-edge-affinity}\n' \
    -H 'x-session-id: alice' -d '{}' "http://$PROXY/v1/messages" 2>/dev/null || echo "curl-failed"
}
first=$(alice)
second=$(alice)
ALICE=$(cut -d' ' -f2 <<<"$first")
check "alice: 200 from $ALICE (affinity ${first##* }), then 200 from the same relay (affinity ${second##* })" eval '
  [[ "$first" == "200 relay-"[ab]" new" ]] && [ "$second" = "200 $ALICE hit" ]'

stage "5. upgrade to $NEW_VERSION while it runs, then the hand-over (SIGUSR2)"
run_dpkg "$WORK/dpkg-upgrade.log" -i --force-confold "$NEW_DEB" || die "dpkg -i --force-confold $NEW_DEB failed"
pass "dpkg -i --force-confold $(basename "$NEW_DEB") (no prompt: stdin is /dev/null)"
status=$(pkg_status)
check "dpkg status: ${status%%|*} $NEW_VERSION" test "$status" = "ii |$NEW_VERSION"
check "conffile changed locally and in the package: dpkg kept the local one (--force-confold) and put the package's beside it as $CONF.dpkg-dist" eval '
  grep -qxF "$LOCAL_EDIT" "$CONF" && ! grep -qxF "$SHIPPED_EDIT" "$CONF" &&
  grep -qxF "$SHIPPED_EDIT" "$CONF.dpkg-dist"'
check "$CONF still root:$PKG 640 after the upgrade" test "$(stat -c '%U:%G %a' "$CONF")" = "root:$PKG 640"
check "the upgrade neither stopped nor restarted the running edge (pid $EDGE_PID; its binary is now \"$(readlink "/proc/$EDGE_PID/exe")\")" eval '
  alive "$EDGE_PID" && [[ "$(readlink "/proc/$EDGE_PID/exe")" == *" (deleted)" ]] && ready'

# Requests all through the hand-over: one connection each (new connections
# are what moves from one process to the other), until told to stop.
: >"$WORK/loop.out"
(
  end=$(($(now_ms) + 180000))
  while [ ! -e "$WORK/loop.stop" ] && [ -d "/proc/$$" ] && (($(now_ms) < end)); do
    alice >>"$WORK/loop.out"
  done
) &
LOOP_PID=$!
count() { wc -l <"$WORK/loop.out"; }
wait_until 30 eval '[ "$(count)" -ge 20 ]' || die "the request loop did not get going"
before=$(count)
usr2_at=$(now_ms)
kill -USR2 "$EDGE_PID"
child() { NEXT_PID=$(pgrep -P "$EDGE_PID" -x relay-edge | head -1 || true); [ -n "$NEXT_PID" ]; }
wait_until 30 eval 'child || gone "$EDGE_PID"' && [ -n "$NEXT_PID" ] || die "SIGUSR2 started no new process within 30 s"
pass "SIGUSR2: the running edge started $(tr '\0' ' ' <"/proc/$NEXT_PID/cmdline")(pid $NEXT_PID)"
pidfile_names_next() { [ "$(pid_file_of "$NEXT_PID")" = "$NEXT_PID" ]; }
wait_until 60 eval 'pidfile_names_next || gone "$NEXT_PID"' && alive "$NEXT_PID" ||
  die "the new process (pid $NEXT_PID) was not ready within 60 s"
pass "the new process is ready and owns the sockets: the pid file names $NEXT_PID, $(($(now_ms) - usr2_at)) ms after SIGUSR2"
wait_until 60 gone "$EDGE_PID" || die "the old process (pid $EDGE_PID) did not drain and exit within 60 s"
old_rc=0
wait "$EDGE_PID" || old_rc=$?
check "the old process drained and exited (status $old_rc), $(($(now_ms) - usr2_at)) ms after SIGUSR2" test "$old_rc" = 0
EDGE_PID=""
at_exit=$(count)
wait_until 30 eval '[ "$(count)" -ge $((at_exit + 20)) ]' || fail "the request loop stalled after the hand-over"
touch "$WORK/loop.stop"
wait_until 15 gone "$LOOP_PID" || die "the request loop did not stop"
LOOP_PID=""
total=$(count)
good=$(grep -c "^200 $ALICE hit\$" "$WORK/loop.out" || true)
check "every request through the hand-over: $good of $total answered 200 by $ALICE, each a hit (the new process took the table over; $before before SIGUSR2, $((total - at_exit)) after the old process exited; affinity outcomes: $(cut -d' ' -f3 "$WORK/loop.out" | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}'))" \
  test "$good" = "$total"
{ grep -v "^200 $ALICE hit\$" "$WORK/loop.out" || true; } | sort | uniq -c | head -5 | sed 's/^/     not as expected: /'
owners() { ss -Hltnp "sport = :${1##*:}" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' '; }
check "only the new process listens on ${PROXY##*:} and ${ADMIN##*:} (owners: $(owners "$PROXY")/ $(owners "$ADMIN"))" eval '
  [ "$(owners "$PROXY")" = "$NEXT_PID " ] && [ "$(owners "$ADMIN")" = "$NEXT_PID " ]'
check "the new process runs the installed $BIN (the new package's file, inode $(stat -c %i "$BIN")) as $UNIT_USER with NoNewPrivs" eval '
  [ "$(readlink "/proc/$NEXT_PID/exe")" = "$BIN" ] && [ "$(stat -L -c %i "/proc/$NEXT_PID/exe")" = "$(stat -c %i "$BIN")" ] &&
  [ "$(proc_field "$NEXT_PID" Uid)" = "$uid" ] && [ "$(proc_field "$NEXT_PID" NoNewPrivs)" = 1 ]'
after=$(alice)
check "alice after the upgrade: 200 from $ALICE (affinity ${after##* })" eval '[[ "$after" == "200 $ALICE "* ]]'
check "/readyz 200 from the new process" ready

stage "6. stop, purge, and what is left"
stopping=$(now_ms)
kill -TERM "$NEXT_PID"
if wait_until 30 gone "$NEXT_PID"; then
  pass "SIGTERM: the edge (pid $NEXT_PID) exited after $(($(now_ms) - stopping)) ms"
  NEXT_PID=""
else
  fail "SIGTERM: the edge (pid $NEXT_PID) still runs after 30 s"
fi
# Both processes logged to edge.log. Pingora's successor logs an ERROR each
# time it looks for the sockets before the old process has sent them.
problems=$(grep -E '^\[[^]]* (WARN|ERROR) ' "$WORK/edge.log" | grep -vF 'No incoming socket transfer, sleep 1s and try again' | head -3 || true)
check "the edge logged no warning or error (but Pingora's \"No incoming socket transfer, sleep 1s and try again\" during the hand-over)${problems:+: $problems}" \
  test -z "$problems"
# (An exited process that PID 1 has not reaped yet is no longer running.)
running_as_user() { local p; for p in $(pgrep -u "$PKG" || true); do if alive "$p"; then echo "$p"; fi; done; }
wait_until 10 eval '[ -z "$(running_as_user)" ]' || true
left=$(running_as_user | tr '\n' ' ')
check "no process of the $PKG user is left${left:+ (left: $left)}" test -z "$left"
stop_pid "$RELAYS_PID"
RELAYS_PID=""

run_dpkg "$WORK/dpkg-purge.log" --purge "$PKG" || die "dpkg --purge $PKG failed"
pass "dpkg --purge $PKG"
INSTALLED_BY_US=0
status=$(pkg_status)
check "dpkg: $PKG is not installed${status:+ (${status%%|*})}" eval '! pkg_present'
remaining=""
for path in "$BIN" /etc/relay-edge "$UNIT" /usr/share/doc/relay-edge "$WANTS" \
  /etc/systemd/system/relay-edge.service \
  /var/lib/systemd/deb-systemd-helper-enabled/relay-edge.service.dsh-also \
  /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/relay-edge.service \
  /var/lib/systemd/deb-systemd-helper-masked/relay-edge.service; do
  [ ! -e "$path" ] && [ ! -L "$path" ] || remaining+=" $path"
done
check "gone: $BIN, /etc/relay-edge (conffile and .dpkg-dist), the unit, the docs, the enable symlink and deb-systemd-helper's state${remaining:+; left:$remaining}" test -z "$remaining"
if [ "$PRIVATE_TMP" = 0 ]; then
  rm -f "$PID_FILE" "$UPGRADE_SOCK"
  info "removed $PID_FILE and $UPGRADE_SOCK, which the edge left in the shared /tmp"
fi
info_files=$(find /var/lib/dpkg/info -maxdepth 1 -name "$PKG.*" | tr '\n' ' ')
check "gone: /var/lib/dpkg/info/$PKG.*${info_files:+ (left: $info_files)}" test -z "$info_files"
owned=$(find /etc /usr /var /run /srv /opt /tmp -xdev \( -user "$PKG" -o -group "$PKG" \) 2>/dev/null | head -5 | tr '\n' ' ' || true)
check "no file owned by the $PKG user or group is left in /etc /usr /var /run /srv /opt /tmp${owned:+ (left: $owned)}" test -z "$owned"
if getent passwd "$PKG" >/dev/null && getent group "$PKG" >/dev/null; then
  info "left as Debian does: the $PKG system user and group ($(getent passwd "$PKG")); a purge keeps system users, whose uid may still own files elsewhere"
else
  fail "the $PKG user or group disappeared on purge"
fi

FINISHED=1
