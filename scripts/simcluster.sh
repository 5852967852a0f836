#!/usr/bin/env bash
# A simulated cluster on this machine: hosts as network namespaces joined by a
# bridge, so that an MPI job crosses a real (virtual) network between hosts
# and shared memory inside each.
#
#   scripts/simcluster.sh up H [--rate RATE]   make hosts pa-h0 .. pa-h(H-1); RATE (tc's
#                                              syntax, e.g. 1gbit) shapes every host's link
#   scripts/simcluster.sh run LAYOUT -- COMMAND...
#                                              one MPI job across the hosts; LAYOUT lists
#                                              HOSTS:RANKS groups, e.g. 2:2 (two hosts of two
#                                              ranks) or 1:3,1:2 (three ranks, then two)
#   scripts/simcluster.sh down                 remove everything `up` made
#   scripts/simcluster.sh status               the hosts, their addresses and link rates
#
# Needs root and iproute2 (ip, tc) and util-linux's unshare; runs the venv's
# mpiexec (MPICH's hydra) unless MPIEXEC names another. Each host gets an
# address on 10.213.47.0/24, only on the devices made here; the bridge
# (pa-br0, 10.213.47.254 in this machine's own namespace) is where mpiexec
# runs. Inside a host, ranks share memory; between hosts, MPICH's UCX sends
# over TCP through the host's veth (UCX_TLS=tcp, UCX_NET_DEVICES=eth0), and
# every host knows the others' names (/etc/netns/pa-hN/hosts), so
# torch.distributed's store and gloo reach them too.
set -euo pipefail

readonly PREFIX=pa
readonly BRIDGE=$PREFIX-br0
readonly SUBNET=10.213.47
readonly BRIDGE_ADDRESS=$SUBNET.254
readonly STATE=/run/pyallreduce-simcluster
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "simcluster: $*" >&2; exit 1; }

host_name() { echo "$PREFIX-h$1"; }
host_address() { echo "$SUBNET.$(($1 + 1))"; }
# The veth end in this machine's namespace; the host's own end is eth0.
host_link() { echo "$PREFIX-v$1"; }

require_tools() {
  [[ $(id -u) == 0 ]] || die "needs root (network namespaces); run it with sudo"
  local tool
  for tool in ip tc unshare; do
    command -v "$tool" >/dev/null || die "needs $tool (iproute2's ip and tc, util-linux's unshare)"
  done
}

host_count() { [[ -f $STATE/hosts ]] && cat "$STATE/hosts" || echo 0; }

# Shapes LINK (in namespace NETNS, if given) to RATE with tc's tbf; its bucket
# holds a millisecond at the rate, at least 16 KiB (one GSO burst must fit).
shape() {
  local link=$1 rate=$2 netns=${3:-} bytes
  bytes=$(($(tc_rate_bits "$rate") / 8 / 1000))
  ((bytes >= 16384)) || bytes=16384
  tc ${netns:+-n "$netns"} qdisc replace dev "$link" root tbf rate "$rate" burst "$bytes" latency 50ms
}

# A tc rate ("1gbit", "100mbit", "500kbit", "2000000bit") in bits per second.
tc_rate_bits() {
  local rate=${1,,} number unit
  [[ $rate =~ ^([0-9]+)([kmg]?)bit$ ]] || die "rate '$1' is not of the form N[k|m|g]bit (e.g. 1gbit)"
  number=${BASH_REMATCH[1]}
  unit=${BASH_REMATCH[2]}
  case $unit in
    k) echo $((number * 1000)) ;;
    m) echo $((number * 1000000)) ;;
    g) echo $((number * 1000000000)) ;;
    *) echo "$number" ;;
  esac
}

up() {
  local hosts=${1:-} rate=""
  [[ $hosts =~ ^[0-9]+$ ]] && ((hosts >= 1 && hosts <= 64)) || die "usage: up H [--rate RATE], 1 <= H <= 64"
  shift
  while (($#)); do
    case $1 in
      --rate) rate=${2:?--rate needs a value}; tc_rate_bits "$rate" >/dev/null; shift 2 ;;
      *) die "unknown option '$1'" ;;
    esac
  done
  require_tools
  (($(host_count) == 0)) || die "a cluster of $(host_count) hosts is up; run 'down' first"
  mkdir -p "$STATE"
  trap 'echo "simcluster: up failed; removing what it made" >&2; down' ERR
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_ADDRESS/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  echo "$hosts" >"$STATE/hosts"
  echo "$rate" >"$STATE/rate"
  local names="" h
  for ((h = 0; h < hosts; h++)); do names+="$(host_address "$h") $(host_name "$h")"$'\n'; done
  for ((h = 0; h < hosts; h++)); do
    local name link
    name=$(host_name "$h")
    link=$(host_link "$h")
    ip netns add "$name"
    ip link add "$link" type veth peer name eth0 netns "$name"
    ip link set "$link" master "$BRIDGE" up
    ip -n "$name" addr add "$(host_address "$h")/24" dev eth0
    ip -n "$name" link set eth0 up
    ip -n "$name" link set lo up
    mkdir -p "/etc/netns/$name"
    printf '127.0.0.1 localhost\n%s' "$names" >"/etc/netns/$name/hosts"
    if [[ -n $rate ]]; then  # both directions
      shape "$link" "$rate"
      shape eth0 "$rate" "$name"
    fi
  done
  # hydra starts each host's proxy through this launcher, as it would ssh.
  printf '#!/bin/sh\nexec %q _launch "$@"\n' "$root/scripts/simcluster.sh" >"$STATE/launch"
  chmod +x "$STATE/launch"
  trap - ERR
  echo "simcluster: $hosts host(s) up: $(for ((h = 0; h < hosts; h++)); do printf '%s ' "$(host_name "$h")"; done)" \
       "${rate:+(links shaped to $rate)}"
}

down() {
  local h hosts
  hosts=$(host_count)
  # Every host this prefix may have made, also after a failed or interrupted up.
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$PREFIX-v" || true); do
    ip link del "$link" 2>/dev/null || true
  done
  # A namespace's veth goes away asynchronously: wait for it, or the next up races.
  for _ in $(seq 100); do
    ip -o link show 2>/dev/null | grep -q ": $PREFIX-v" || break
    sleep 0.05
  done
  for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-h" || true); do
    ip netns pids "$name" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$name" 2>/dev/null || true
    rm -rf "/etc/netns/$name"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
  ((hosts == 0)) || echo "simcluster: down ($hosts host(s) removed)"
}

status() {
  local hosts h
  hosts=$(host_count)
  ((hosts > 0)) || { echo "simcluster: no cluster is up"; return 0; }
  local rate
  rate=$(cat "$STATE/rate")
  echo "simcluster: $hosts host(s), links ${rate:+shaped to }${rate:-unshaped}"
  for ((h = 0; h < hosts; h++)); do echo "  $(host_name "$h") $(host_address "$h")"; done
}

# LAYOUT ("2:2", "1:3,1:2") as hydra's host list ("pa-h0:2,pa-h1:2"), and the rank count.
hydra_hosts() {
  local layout=$1 available=$2 list="" next=0 ranks=0 group count per
  IFS=, read -ra groups <<<"$layout"
  for group in "${groups[@]}"; do
    [[ $group =~ ^([0-9]+):([0-9]+)$ ]] || die "layout '$layout': each group is HOSTS:RANKS, e.g. 2:2"
    count=${BASH_REMATCH[1]}
    per=${BASH_REMATCH[2]}
    ((count >= 1 && per >= 1)) || die "layout '$layout': hosts and ranks must be at least 1"
    for ((i = 0; i < count; i++)); do
      ((next < available)) || die "layout '$layout' needs more than the $available host(s) that are up"
      list+="${list:+,}$(host_name "$next"):$per"
      next=$((next + 1))
      ranks=$((ranks + per))
    done
  done
  echo "$list $ranks"
}

run() {
  local layout=${1:-}
  [[ -n $layout && ${2:-} == -- && $# -ge 3 ]] || die "usage: run LAYOUT -- COMMAND..."
  shift 2
  require_tools
  local hosts
  hosts=$(host_count)
  ((hosts > 0)) || die "no cluster is up; run 'up H' first"
  read -r list ranks < <(hydra_hosts "$layout" "$hosts")
  local mpiexec=${MPIEXEC:-$root/.venv/bin/mpiexec}
  [[ -x $mpiexec ]] || die "no mpiexec at $mpiexec (run scripts/setup_venv.sh, or set MPIEXEC)"
  UCX_TLS=${UCX_TLS:-tcp} UCX_NET_DEVICES=${UCX_NET_DEVICES:-eth0} \
    exec "$mpiexec" -launcher ssh -launcher-exec "$STATE/launch" -iface "$BRIDGE" -hosts "$list" -n "$ranks" "$@"
}

# Called by hydra as it would call ssh: [ssh options] HOST COMMAND...; runs
# COMMAND in HOST's namespace under its own host name.
launch() {
  local host=""
  while (($#)); do
    case $1 in
      -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;  # ssh options that take a value
      -*) shift ;;
      *) host=$1; shift; break ;;
    esac
  done
  [[ $host == "$PREFIX"-h* ]] || die "launcher: '$host' is not a simulated host"
  exec ip netns exec "$host" unshare --uts sh -c "hostname $host && exec $*"
}

command=${1:-}
shift || true
case $command in
  up) up "$@" ;;
  down) require_tools; down ;;
  run) run "$@" ;;
  status) status ;;
  _launch) launch "$@" ;;
  *) die "usage: $0 up H [--rate RATE] | run LAYOUT -- COMMAND... | down | status" ;;
esac
