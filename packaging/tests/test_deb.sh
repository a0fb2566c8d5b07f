#!/usr/bin/env bash
# Tests the passage-agent Debian package end to end. Run as root on a Debian host; scripts/test.sh
# runs it through as_root (as root, or with sudo), after the cargo tests built the binaries:
#
#   packaging/tests/test_deb.sh [BINARY]        # default: target/debug/passage-agent of this checkout
#
# It depends on neither the caller's working directory nor HOME: it makes BINARY absolute, then
# works from / with root's HOME, umask 022 and the C.UTF-8 locale.
#
# 1. builds the .deb (packaging/debian/build-deb.sh) and checks it with dpkg-deb --info and
#    --contents: fields, maintainer scripts, paths, owners and modes, the example configuration;
# 2. installs it (dpkg -i): the system user, the state directory, the binary, the unit installed
#    but not enabled; `systemd-analyze verify` prints nothing, and `systemd-analyze security
#    --offline=true` rates the unit at most PASSAGE_DEB_MAX_EXPOSURE (default 2.0);
# 3. runs `passage-agent register` as the service user with the token in the environment, against
#    a dispatcher that is not there: it fails to connect, having made its keys (0600) in the
#    state directory;
# 4. with systemd itself, booted in private namespaces (pid, mount, network, UTS, IPC, cgroup;
#    /run and /tmp are its own) in a cgroup of its own: enrols the agent against a real
#    dispatcher (passage-dispatcher and the passage CLI beside BINARY; without them, no
#    dispatcher), starts the unit as installed (a drop-in only drops the boot-time dependencies
#    and sends its output to a file), checks /healthz, that the agent runs as passage-agent with
#    no capabilities, no new privileges and a seccomp filter, that an upgrade (dpkg -i with
#    systemd running) restarts it, and that it stops cleanly on SIGTERM.
#    Where systemd cannot be booted so, the step is skipped with a line "SKIPPED: <why>" and the
#    rest runs: no cgroup2, nsenter or systemd; no permission to create a cgroup, move a process
#    into it or mount proc, cgroup2 or tmpfs in the namespaces (all probed first, in throwaway
#    namespaces); or systemd not up within 20 s. PASSAGE_DEB_REQUIRE_SYSTEMD=1 makes a skip a
#    failure (for hosts known to run it);
# 5. reinstalls over itself (the user and the agent's identity stay); enables the unit, removes
#    the package (the unit masked, the enablement kept) and reinstalls it (unmasked, enabled
#    again); purges, and checks what is gone and what purge keeps (the state directory and the
#    user, by design).
#
# Idempotent: it removes what it created (package, user, group, state, namespaces and their
# cgroups) when it ends, also on SIGTERM, SIGINT and SIGHUP. What a run killed harder leaves, the
# next run removes: processes and cgroups passage-deb-test.* first, then the package, user, group
# and state (those only with the marker file this test leaves). It refuses to run on a host where
# passage-agent is installed, or has a user, group or state directory that this test did not leave.
set -euo pipefail
# bash runs the EXIT trap (the cleanup below) on `exit`, not when a signal kills it.
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary=${1:-$repo/target/debug/passage-agent}
# Absolute, relative to the caller's directory (symlinks kept: the dispatcher is looked for beside
# the path given).
case "$binary" in
  /*) ;;
  *) binary=$PWD/$binary ;;
esac
# Nothing below depends on the caller's cwd, HOME, umask or locale (sudo passes some of them on).
cd /
HOME=$(getent passwd root | cut -d: -f6)
export HOME=${HOME:-/root}
export LC_ALL=C.UTF-8
umask 022
max_exposure=${PASSAGE_DEB_MAX_EXPOSURE:-2.0}
require_systemd=${PASSAGE_DEB_REQUIRE_SYSTEMD:-0}
svc_user=passage-agent
state_dir=/var/lib/passage-agent
unit=passage-agent.service
marker=/var/tmp/passage-agent-test_deb.marker

passed=0
skipped=
ok() {
  passed=$((passed + 1))
  echo "ok: $*"
}
fail() {
  echo "FAIL: $*" >&2
  echo "deb: $passed passed, 1 failed"
  exit 1
}
step() { echo "==> $*"; }

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs a package and creates a system user)"
[ -x "$binary" ] || fail "$binary is not an executable (build the workspace first)"
for tool in dpkg-deb dpkg systemd-analyze systemctl adduser deluser usermod runuser unshare; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (apt-get install dpkg-dev adduser systemd)"
done

cgroup2_root() {
  if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
    echo /sys/fs/cgroup
  elif [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
    echo /sys/fs/cgroup/unified
  fi
}
cg_root=$(cgroup2_root)
# Kills every process in the cgroup tree DIR (the namespaced systemd, the agent, the dispatcher),
# then removes the tree.
kill_cgroup() {
  local cg=$1
  [ -n "$cg" ] && [ -d "$cg" ] || return 0
  for _ in $(seq 50); do
    if [ -e "$cg/cgroup.kill" ]; then
      echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
    else
      find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    fi
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$cg" ] || return 0
    sleep 0.1
  done
  echo "warning: could not remove the cgroup $cg" >&2
}
# The pid in a name passage-deb-test.PID[.…], if it is a run of this test still going.
live_run() {
  local pid
  pid=$(basename "$1" | sed -n 's/^passage-deb-test\.\([0-9][0-9]*\)\..*$/\1/p; s/^passage-deb-test\.\([0-9][0-9]*\)$/\1/p')
  [ -n "$pid" ] && [ "$pid" != "$$" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q test_deb.sh
}

# ---------------------------------------------------------------------------------------------
# What an earlier run killed before its cleanup left: its namespaced systemd (with the agent and
# the dispatcher) in a cgroup passage-deb-test.PID, and its directory /var/tmp/passage-deb-test.*.
for leftover in ${cg_root:+"$cg_root"/passage-deb-test.*} /var/tmp/passage-deb-test.*; do
  [ -e "$leftover" ] || continue
  ! live_run "$leftover" || fail "another run of this test is in progress ($leftover)"
  step "removing $leftover, left by a killed run of this test"
  case "$leftover" in
    /var/tmp/*) rm -rf "$leftover" ;;
    *) kill_cgroup "$leftover" ;;
  esac
done

# A clean host, or only what an interrupted run of this test left.
# Whether dpkg knows passage-agent in any state but "not installed" (installed, config-files, ...).
package_known() {
  local st
  st=$(dpkg-query -W -f='${db:Status-Status}' passage-agent 2>/dev/null || true)
  [ -n "$st" ] && [ "$st" != not-installed ]
}
# The marker says "group" when the group passage-agent did not exist before this test's run: the
# package's postinst creates it then, and only then is it this test's to delete.
owns_group() { grep -qx group "$marker" 2>/dev/null; }
remove_leftovers() {
  if package_known; then
    dpkg --purge passage-agent >/dev/null
  fi
  rm -rf "$state_dir"
  if getent passwd "$svc_user" >/dev/null; then
    if owns_group; then
      deluser --system --quiet "$svc_user" 2>/dev/null || true
    else
      # deluser's userdel deletes the user's group of the same name too (USERGROUPS_ENAB), unless
      # it is not the user's primary group: this group is not this test's to delete.
      usermod -g nogroup "$svc_user" 2>/dev/null || true
      deluser --system --quiet "$svc_user" 2>/dev/null || true
    fi
  fi
  if owns_group && getent group "$svc_user" >/dev/null; then
    delgroup --system --quiet "$svc_user" 2>/dev/null || true
  fi
  rmdir /etc/passage 2>/dev/null || true
}
if package_known || [ -e "$state_dir" ] || getent passwd "$svc_user" >/dev/null || getent group "$svc_user" >/dev/null; then
  [ -e "$marker" ] || fail "this host already has passage-agent (package, $state_dir, user or group) that this test did not create: run it on a scratch machine"
  step "removing what an interrupted run of this test left"
  remove_leftovers
fi
if getent group "$svc_user" >/dev/null; then
  : >"$marker" # a group this test did not create (kept by the cleanup above): never deleted
else
  echo group >"$marker"
fi

# systemd in private namespaces (step 4).
ns_pid=
nsx() { nsenter -t "$ns_pid" -a "$@"; }
# GET http://127.0.0.1:9100/healthz inside the namespaces (bash alone, no curl): the status code,
# or the whole answer with "full".
healthz() {
  nsx bash -c 'exec 3<>/dev/tcp/127.0.0.1/9100 && printf "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3 && cat <&3' \
    2>/dev/null | if [ "${1:-}" = full ]; then cat; else awk 'NR == 1 { print $2 }'; fi
}
stop_namespaces() {
  if [ -n "$ns_unshare_pid" ] && kill -0 "$ns_unshare_pid" 2>/dev/null; then
    # Killing the namespaces' PID 1 ends every process in them (and unshare --kill-child kills
    # PID 1 when it dies).
    [ -z "$ns_pid" ] || kill -KILL "$ns_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$ns_unshare_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$ns_unshare_pid" 2>/dev/null || true
    wait "$ns_unshare_pid" 2>/dev/null || true
  fi
  ns_unshare_pid=
  ns_pid=
  kill_cgroup "$ns_cgroup"
  ns_cgroup=
}

work=$(mktemp -d -p /var/tmp "passage-deb-test.$$.XXXXXX")
chmod 0755 "$work"
ns_unshare_pid=
ns_cgroup=
probe_cgroup=
cleanup() {
  trap '' TERM INT HUP
  set +e
  stop_namespaces
  kill_cgroup "$probe_cgroup"
  remove_leftovers
  rm -rf "$work"
  rm -f "$marker"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
step "build the package"
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")
version=${version/-/\~}
arch=$(dpkg --print-architecture)
deb=$("$repo/packaging/debian/build-deb.sh" "$binary" "$work/dist")
[ "$deb" = "$work/dist/passage-agent_${version}_${arch}.deb" ] || fail "unexpected package path $deb"
[ -f "$deb" ] || fail "$deb was not written"
ok "built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

step "dpkg-deb --info"
dpkg-deb --info "$deb"
field() { dpkg-deb --field "$deb" "$1"; }
[ "$(field Package)" = passage-agent ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$version" ] || fail "Version: $(field Version), expected $version"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture: $(field Architecture)"
depends=$(field Depends)
case "$depends" in
  adduser,*libc6*) ;;
  *) fail "Depends: $depends (expected adduser and libc6)" ;;
esac
[ -n "$(field Description)" ] || fail "no Description"
[ -n "$(field Maintainer)" ] || fail "no Maintainer"
ok "control: passage-agent $version $arch, Depends: $depends"
info=$(dpkg-deb --info "$deb")
for script in postinst prerm postrm; do
  grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$script " <<<"$info" || fail "no executable $script"
done
! grep -q ' conffiles' <<<"$info" || fail "the package has conffiles (it should ship none: agent.toml is the operator's)"
ok "maintainer scripts postinst, prerm, postrm (executable); no conffiles"

step "dpkg-deb --contents"
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
expect_entry() { # mode owner path
  awk -v m="$1" -v o="$2" -v p="$3" '$1 == m && $2 == o && $NF == p { found = 1 } END { exit !found }' \
    <<<"$contents" || fail "no $3 with mode $1 and owner $2 in the package"
}
expect_entry -rwxr-xr-x root/root ./usr/bin/passage-agent
expect_entry -rw-r--r-- root/root ./lib/systemd/system/passage-agent.service
expect_entry drwxr-xr-x root/root ./etc/passage/
expect_entry -rw-r--r-- root/root ./etc/passage/agent.toml.example
expect_entry -rw-r--r-- root/root ./usr/share/doc/passage-agent/copyright
expect_entry -rw-r--r-- root/root ./usr/share/doc/passage-agent/agent-on-a-vm.md
others=$(awk '$2 != "root/root"' <<<"$contents")
[ -z "$others" ] || fail "entries not owned by root: $others"
! grep -q '\./var/lib/passage-agent\|\./etc/passage/agent\.toml$' <<<"$contents" \
  || fail "the package must not ship the state directory or agent.toml"
ok "contents: paths, modes and owners as expected"
example=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./etc/passage/agent.toml.example)
grep -q '^state_dir = "/var/lib/passage-agent"' <<<"$example" || fail "the example's state_dir is not /var/lib/passage-agent"
grep -q '^bind_password_file = "/etc/passage/' <<<"$example" || fail "the example's bind_password_file is not under /etc/passage"
! grep -q '/etc/passage-agent/' <<<"$example" || fail "the example still names /etc/passage-agent/"
ok "agent.toml.example: state in /var/lib/passage-agent, secrets under /etc/passage"

# ---------------------------------------------------------------------------------------------
step "dpkg -i"
dpkg -i "$deb"
[ "$(dpkg-query -W -f='${Status}' passage-agent)" = "install ok installed" ] || fail "not installed"
ok "installed"

entry=$(getent passwd "$svc_user") || fail "no user $svc_user"
IFS=: read -r _ _ uid gid _ home shell <<<"$entry"
[ "$uid" -lt 1000 ] || fail "$svc_user is not a system user (uid $uid)"
[ "$(getent group "$svc_user" | cut -d: -f3)" = "$gid" ] || fail "the primary group of $svc_user is not $svc_user"
[ "$home" = "$state_dir" ] || fail "home of $svc_user is $home"
case "$shell" in */nologin | */false) ;; *) fail "$svc_user has a login shell: $shell" ;; esac
ok "system user $svc_user (uid $uid, group $svc_user, shell $shell)"
[ "$(stat -c '%U:%G %a' "$state_dir")" = "$svc_user:$svc_user 700" ] \
  || fail "$state_dir is $(stat -c '%U:%G %a' "$state_dir")"
ok "$state_dir owned by $svc_user, mode 0700"

out=$(passage-agent --version)
[ "$out" = "passage-agent ${version//\~/-}" ] || fail "passage-agent --version printed '$out'"
out=$(runuser -u "$svc_user" -- passage-agent --version)
[ "$out" = "passage-agent ${version//\~/-}" ] || fail "as $svc_user, passage-agent --version printed '$out'"
ok "passage-agent --version: $out (as root and as $svc_user)"

enabled=$(systemctl is-enabled "$unit" 2>&1 || true)
[ "$enabled" = disabled ] || fail "the unit is '$enabled' after install, not disabled"
[ ! -e "/etc/systemd/system/multi-user.target.wants/$unit" ] || fail "the unit was enabled"
ok "unit installed, not enabled (systemctl is-enabled: $enabled)"

step "systemd-analyze verify"
verify_rc=0
verify_out=$(cd / && systemd-analyze verify "/lib/systemd/system/$unit" 2>&1) || verify_rc=$?
printf '%s\n' "$verify_out"
[ "$verify_rc" -eq 0 ] || fail "systemd-analyze verify exited $verify_rc"
if grep -Ei 'unknown (key|section|lvalue)|failed|invalid|ignoring|not executable|passage-agent' <<<"$verify_out"; then
  fail "systemd-analyze verify complained (above)"
fi
ok "systemd-analyze verify: rc 0, no complaint"

step "systemd-analyze security --offline=true"
security=$(systemd-analyze security --offline=true "$unit" 2>&1) || fail "systemd-analyze security failed: $security"
grep '✗' <<<"$security" || true
overall=$(grep -o 'Overall exposure level for passage-agent.service: [0-9.]* [A-Z]*' <<<"$security") \
  || fail "no overall exposure level in: $security"
echo "$overall"
level=$(awk '{print $(NF-1)}' <<<"$overall")
awk -v l="$level" -v m="$max_exposure" 'BEGIN { exit !(l <= m) }' \
  || fail "exposure $level is above $max_exposure"
ok "exposure level $level (at most $max_exposure)"

# ---------------------------------------------------------------------------------------------
step "register as $svc_user, the token from the environment, no dispatcher listening"
mkdir -p "$work/etc"
chmod 0755 "$work/etc"
cat >"$work/etc/unreachable.toml" <<EOF
dispatchers = ["http://127.0.0.1:1"]
connector_group = "test.invalid"
state_dir = "$state_dir"
insecure_plaintext = true

[directory]
kind = "static"
path = "$work/etc/users.toml"
EOF
echo 'users = []' >"$work/etc/users.toml"
chmod 0644 "$work/etc/unreachable.toml" "$work/etc/users.toml"
register_rc=0
register_out=$(PASSAGE_ENROLMENT_TOKEN=pet_not_a_real_token runuser -u "$svc_user" -- \
  passage-agent register --config "$work/etc/unreachable.toml" 2>&1) || register_rc=$?
echo "$register_out"
[ "$register_rc" -ne 0 ] || fail "register succeeded without a dispatcher"
grep -q 'enrolment failed: http://127.0.0.1:1: connect' <<<"$register_out" \
  || fail "register did not fail at connecting (permissions? token?)"
[ -s "$state_dir/agent-id" ] || fail "no agent-id in $state_dir"
for f in agent-key.der sealing-key.bin; do
  [ "$(stat -c '%U %a' "$state_dir/$f")" = "$svc_user 600" ] \
    || fail "$state_dir/$f is $(stat -c '%U %a' "$state_dir/$f")"
done
agent_id=$(cat "$state_dir/agent-id")
ok "register as $svc_user read the token from PASSAGE_ENROLMENT_TOKEN and made its keys (0600) in $state_dir"

# ---------------------------------------------------------------------------------------------
live=yes
# Says why step 4 is not run, and goes on without it; or fails, with PASSAGE_DEB_REQUIRE_SYSTEMD=1.
skip_live() {
  [ "$require_systemd" != 1 ] || fail "systemd cannot be booted in private namespaces here, and PASSAGE_DEB_REQUIRE_SYSTEMD=1: $*"
  live=no
  skipped="step 4, the unit under systemd: $*"
  echo "SKIPPED: $skipped (PASSAGE_DEB_REQUIRE_SYSTEMD=1 makes this a failure)"
}
cat >"$work/ns-init.sh" <<'EOF'
#!/bin/bash
# PID 1 of the namespaces: its own /proc, cgroup2 tree, /run and /tmp, then systemd. With
# "probe": only the mounts, then exit 0 (the test's check that systemd can be booted here).
set -e
must() {
  local err
  err=$("$@" 2>&1) || { echo "in the namespaces, '$*' failed: $(printf '%s' "$err" | tr -s '\n ' '  ')" >&2; exit 1; }
}
must mount --make-rprivate /
must mount -t proc proc /proc
must umount -R /sys/fs/cgroup
must mount -t cgroup2 cgroup2 /sys/fs/cgroup
must mount -t tmpfs -o mode=0755 tmpfs /run
must mount -t tmpfs -o mode=1777 tmpfs /tmp
[ "${1:-}" != probe ] || exit 0
mkdir -p /run/systemd/system/passage-agent.service.d /run/passage-test
cat >/run/systemd/system/passage-test.target <<'UNIT'
[Unit]
Description=passage-agent package test
DefaultDependencies=no
UNIT
# Boot nothing but what the test starts: the unit as installed, without its boot-time
# dependencies (sysinit, network-online), its output in a file (no journald here).
cat >/run/systemd/system/passage-agent.service.d/test.conf <<'UNIT'
[Unit]
DefaultDependencies=no
[Service]
StandardOutput=append:/run/passage-test/agent.log
StandardError=inherit
UNIT
ln -s /dev/null /run/systemd/system/network-online.target
# The host's policy-rc.d (a container's "deny all") must not stop the upgrade's try-restart.
if [ -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 0\n' >/run/passage-test/policy-rc.d
  chmod 0755 /run/passage-test/policy-rc.d
  mount --bind /run/passage-test/policy-rc.d /usr/sbin/policy-rc.d
fi
ip link set lo up 2>/dev/null || true
hostname passage-test
exec env -i container=passage-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit=passage-test.target --log-target=console --show-status=no
EOF
chmod 0755 "$work/ns-init.sh"
# Whether systemd can be booted here as below, tried in throwaway namespaces: a cgroup of its own
# (mkdir, a process moved into it), then the namespaces and their proc, cgroup2 and tmpfs mounts.
# Sets why when not.
why=
probe_namespaces() {
  local err
  [ -n "$cg_root" ] || { why="no cgroup2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified)"; return 1; }
  [ -x /lib/systemd/systemd ] || { why="no /lib/systemd/systemd"; return 1; }
  command -v nsenter >/dev/null 2>&1 || { why="no nsenter"; return 1; }
  probe_cgroup=$cg_root/passage-deb-test.$$.probe
  if ! err=$(mkdir "$probe_cgroup" 2>&1); then
    probe_cgroup=
    why="cannot create a cgroup under $cg_root (${err#mkdir: })"
    return 1
  fi
  if ! err=$( (
    { echo "$BASHPID" >"$probe_cgroup/cgroup.procs"; } 2>/dev/null \
      || { echo "cannot move a process into the cgroup $probe_cgroup"; exit 1; }
    exec unshare --kill-child --pid --mount --uts --ipc --net --cgroup "$work/ns-init.sh" probe
  ) 2>&1); then
    why=$(printf '%s\n' "$err" | grep . | tail -1)
    why=${why:-the namespaces could not be made}
  fi
  kill_cgroup "$probe_cgroup"
  probe_cgroup=
  [ -z "$why" ]
}
probe_namespaces || skip_live "$why"

if [ "$live" = yes ]; then
  step "boot systemd in private namespaces"
  ns_cgroup=$cg_root/passage-deb-test.$$
  if ! err=$(mkdir "$ns_cgroup" 2>&1); then
    ns_cgroup=
    skip_live "cannot create the cgroup $cg_root/passage-deb-test.$$ (${err#mkdir: })"
  fi
fi
if [ "$live" = yes ]; then
  (
    echo "$BASHPID" >"$ns_cgroup/cgroup.procs"
    # --kill-child: whatever ends unshare (this test's end, a signal) ends systemd and all below it.
    exec unshare --kill-child --pid --mount --uts --ipc --net --cgroup "$work/ns-init.sh"
  ) >"$work/systemd.log" 2>&1 &
  ns_unshare_pid=$!
  state=
  for _ in $(seq 100); do
    kill -0 "$ns_unshare_pid" 2>/dev/null || break
    ns_pid=$(cat "/proc/$ns_unshare_pid/task/$ns_unshare_pid/children" 2>/dev/null | awk '{print $1}')
    if [ -n "$ns_pid" ]; then
      state=$(nsx systemctl is-system-running 2>/dev/null || true)
      case "$state" in running | degraded) break ;; esac
    fi
    sleep 0.2
  done
  case "$state" in
    running | degraded) ok "systemd $(systemctl --version | awk 'NR==1{print $2}') running in private namespaces ($state)" ;;
    *)
      echo "--- systemd's output:"
      cat "$work/systemd.log"
      echo "---"
      stop_namespaces
      skip_live "systemd did not come up in the namespaces within 20 s (state '${state:-none}'; its output above)"
      ;;
  esac
fi

if [ "$live" = yes ]; then
  # The configuration the unit reads, and the bind password file: owned by the service user,
  # 0400. Bind-mounted over /etc/passage inside the namespaces only.
  mkdir -p "$work/passage"
  cat >"$work/passage/agent.toml" <<EOF
dispatchers = ["http://127.0.0.1:8443"]
connector_group = "test.invalid"
state_dir = "$state_dir"
insecure_plaintext = true
health_listen = "127.0.0.1:9100"

[directory]
kind = "ldap"
url = "ldaps://127.0.0.1:1"
base_dn = "DC=test,DC=invalid"
bind_dn = "CN=passage,DC=test,DC=invalid"
bind_password_file = "/etc/passage/ldap-bind-password"
EOF
  chmod 0644 "$work/passage/agent.toml"
  install -o "$svc_user" -g "$svc_user" -m 0400 /dev/null "$work/passage/ldap-bind-password"
  printf 'not-a-real-password\n' >"$work/passage/ldap-bind-password"
  cp /etc/passage/agent.toml.example "$work/passage/"
  chmod 0755 "$work/passage"
  nsenter -t "$ns_pid" -m mount --bind "$work/passage" /etc/passage
  nsx systemctl daemon-reload

  dispatcher=$(dirname "$binary")/passage-dispatcher
  cli=$(dirname "$binary")/passage
  if [ -x "$dispatcher" ] && [ -x "$cli" ]; then
    step "enrol against a dispatcher (plaintext, SQLite store) in the namespaces"
    mkdir -p "$work/dispatcher"
    cp "$dispatcher" "$cli" "$work/dispatcher/"
    store=sqlite://$work/dispatcher/passage.db
    nsx systemd-run --quiet --unit=passage-test-dispatcher \
      -p StandardOutput=append:/run/passage-test/dispatcher.log -p StandardError=inherit \
      "$work/dispatcher/passage-dispatcher" --agent-listen 127.0.0.1:8443 --api-listen 127.0.0.1:8444 \
      --insecure-plaintext --store "$store"
    for _ in $(seq 100); do
      grep -q 'dispatcher serving' "/proc/$ns_pid/root/run/passage-test/dispatcher.log" 2>/dev/null && break
      sleep 0.2
    done
    grep -q 'dispatcher serving' "/proc/$ns_pid/root/run/passage-test/dispatcher.log" \
      || { cat "/proc/$ns_pid/root/run/passage-test/dispatcher.log"; fail "the dispatcher did not start"; }
    token=$("$work/dispatcher/passage" agent --store "$store" token create \
      --tenant default --connector-group test.invalid --ttl 600 2>/dev/null | head -1)
    [ -n "$token" ] || fail "no enrolment token"
    enrol_out=$(nsenter -t "$ns_pid" -a env PASSAGE_ENROLMENT_TOKEN="$token" \
      runuser -u "$svc_user" -- passage-agent register --config /etc/passage/agent.toml 2>&1) \
      || { echo "$enrol_out"; fail "register failed"; }
    echo "$enrol_out"
    grep -q 'enrolled agent_id=' <<<"$enrol_out" || fail "register did not enrol"
    [ -f "$state_dir/agent-cert.pem" ] || fail "no certificate in $state_dir"
    ok "enrolled as $svc_user (the token in PASSAGE_ENROLMENT_TOKEN)"
    expect_health=200
  else
    echo "(no passage-dispatcher and passage beside $binary: the agent runs without a dispatcher)"
    expect_health=503
  fi

  step "systemctl start $unit"
  nsx systemctl start "$unit"
  health=
  for _ in $(seq 100); do
    health=$(healthz || true)
    [ "$health" = "$expect_health" ] && break
    sleep 0.2
  done
  if [ "$health" != "$expect_health" ]; then
    nsx systemctl status "$unit" --no-pager || true
    cat "/proc/$ns_pid/root/run/passage-test/agent.log"
    fail "GET /healthz answered '$health', expected $expect_health"
  fi
  healthz full | tail -1
  echo
  ok "the unit runs; GET /healthz answers $health"

  main_pid=$(nsx systemctl show -p MainPID --value "$unit")
  status=$(nsx cat "/proc/$main_pid/status")
  grep -E '^(Uid|Gid|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' <<<"$status"
  # PrivateUsers=yes: the service user keeps its own UID inside its user namespace.
  grep -Eq "^Uid:[[:space:]]+${uid}[[:space:]]+${uid}[[:space:]]+${uid}[[:space:]]+${uid}\$" <<<"$status" || fail "the agent does not run as $svc_user"
  grep -Eq '^CapEff:[[:space:]]+0+$' <<<"$status" || fail "the agent has capabilities"
  grep -Eq '^CapBnd:[[:space:]]+0+$' <<<"$status" || fail "the agent's bounding set is not empty"
  grep -Eq '^NoNewPrivs:[[:space:]]+1$' <<<"$status" || fail "NoNewPrivs is not set"
  grep -Eq '^Seccomp:[[:space:]]+2$' <<<"$status" || fail "no seccomp filter"
  ok "the agent runs as $svc_user: no capabilities, no new privileges, seccomp filter"
  # ProtectSystem=strict: only the state directory is writable.
  nsx nsenter -t "$main_pid" -m findmnt -no OPTIONS -T /usr | grep -q '\bro\b' || fail "/usr is writable for the agent"
  nsx nsenter -t "$main_pid" -m findmnt -no OPTIONS -T /etc | grep -q '\bro\b' || fail "/etc is writable for the agent"
  nsx nsenter -t "$main_pid" -m findmnt -no OPTIONS -T "$state_dir" | grep -q '\brw\b' || fail "$state_dir is not writable for the agent"
  ok "the agent's /usr and /etc are read-only, $state_dir read-write"

  step "upgrade with systemd running: dpkg -i restarts a running agent"
  nsx dpkg -i "$deb" >/dev/null
  new_pid=$(nsx systemctl show -p MainPID --value "$unit")
  [ "$new_pid" != "$main_pid" ] && [ "$new_pid" != 0 ] || fail "the agent was not restarted (pid $main_pid, now $new_pid)"
  for _ in $(seq 100); do
    health=$(healthz || true)
    [ "$health" = "$expect_health" ] && break
    sleep 0.2
  done
  [ "$health" = "$expect_health" ] || fail "after the upgrade GET /healthz answered '$health'"
  [ "$(cat "$state_dir/agent-id")" != "" ] || fail "the agent id was lost"
  ok "upgrade restarted the agent (pid $main_pid -> $new_pid), healthy again"

  step "systemctl stop $unit (SIGTERM)"
  nsx systemctl stop "$unit"
  result=$(nsx systemctl show -p Result --value "$unit")
  exit_status=$(nsx systemctl show -p ExecMainStatus --value "$unit")
  [ "$result" = success ] && [ "$exit_status" = 0 ] || fail "stop: Result=$result ExecMainStatus=$exit_status"
  grep -q 'agent shutting down; finishing in-flight validations' "/proc/$ns_pid/root/run/passage-test/agent.log" \
    || fail "the agent did not log its shutdown"
  ok "stopped on SIGTERM: exit 0, Result=success"
  agent_id=$(cat "$state_dir/agent-id")
  stop_namespaces
fi

# ---------------------------------------------------------------------------------------------
step "reinstall over itself (no systemd running)"
dpkg -i "$deb" >/dev/null
[ "$(id -u "$svc_user")" = "$uid" ] || fail "the user changed UID"
[ "$(cat "$state_dir/agent-id")" = "$agent_id" ] || fail "the agent id changed"
[ "$(stat -c '%U %a' "$state_dir/agent-key.der")" = "$svc_user 600" ] || fail "the key changed owner or mode"
ok "reinstall keeps the user (uid $uid) and the agent's identity ($agent_id)"

step "enable, remove, reinstall"
wants=/etc/systemd/system/multi-user.target.wants/$unit
mask=/etc/systemd/system/$unit
systemctl enable "$unit"
[ "$(systemctl is-enabled "$unit" 2>&1 || true)" = enabled ] || fail "systemctl enable did not enable the unit"
dpkg --remove passage-agent
[ "$(dpkg-query -W -f='${db:Status-Status}' passage-agent)" = config-files ] || fail "not in state config-files after remove"
for path in /usr/bin/passage-agent "/lib/systemd/system/$unit"; do
  [ ! -e "$path" ] || fail "$path is still there after remove"
done
# The enablement outlives remove (purge removes it): the unit is masked, so that it names a masked
# unit, not a missing one, until the package comes back or is purged.
[ "$(readlink "$mask" 2>/dev/null)" = /dev/null ] || fail "remove did not mask the unit ($mask)"
[ -e "/var/lib/systemd/deb-systemd-helper-masked/$unit" ] || fail "remove did not record the mask"
[ -L "$wants" ] || fail "remove dropped the enablement ($wants)"
enabled=$(systemctl is-enabled "$unit" 2>&1 || true)
[ "$enabled" = masked ] || fail "after remove the unit is '$enabled', not masked"
[ -f "$state_dir/agent-key.der" ] && getent passwd "$svc_user" >/dev/null || fail "remove removed the state or the user"
ok "remove: binary and unit gone, the unit masked (enablement kept), state and user kept"
dpkg -i "$deb" >/dev/null
[ ! -L "$mask" ] || fail "reinstall did not unmask the unit"
enabled=$(systemctl is-enabled "$unit" 2>&1 || true)
[ "$enabled" = enabled ] || fail "after remove and reinstall the unit is '$enabled', not enabled"
[ "$(cat "$state_dir/agent-id")" = "$agent_id" ] || fail "the agent id changed"
ok "reinstall after remove: unmasked, enabled again, the same agent ($agent_id)"

step "dpkg --purge"
dpkg --purge passage-agent
! package_known || fail "still known to dpkg"
for path in /usr/bin/passage-agent "/lib/systemd/system/$unit" /etc/passage/agent.toml.example \
  /usr/share/doc/passage-agent /etc/passage "$wants" "$mask" \
  "/var/lib/systemd/deb-systemd-helper-enabled/$unit.dsh-also" \
  "/var/lib/systemd/deb-systemd-helper-masked/$unit"; do
  [ ! -e "$path" ] && [ ! -L "$path" ] || fail "$path is still there after purge"
done
ok "purged: binary, unit, example, docs, /etc/passage, the unit's enablement and mask are gone"
if [ ! -f "$state_dir/agent-key.der" ] || ! getent passwd "$svc_user" >/dev/null; then
  fail "purge removed the state directory or the user (it keeps them)"
fi
ok "purge keeps $state_dir and the user $svc_user (removed by this test now)"

if [ -n "$skipped" ]; then
  echo "SKIPPED: $skipped"
  echo "deb: $passed passed, 0 failed, 1 skipped"
else
  echo "deb: $passed passed, 0 failed"
fi
