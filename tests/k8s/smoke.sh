#!/usr/bin/env bash
# tests/k8s/smoke.sh: end-to-end check of the API server that tests/k8s/apiserver.sh provides.
#
#   tests/k8s/smoke.sh [DIR]    DIR defaults to a temporary directory; if DIR/env exists and its
#                               cluster answers, that cluster is used and left running,
#                               otherwise the script starts one in DIR and stops it at the end.
#
# It checks: namespaces; a v1 CRD (group cellroute.dev, kind RoutingConfig, status subresource)
# applied with --validate=false; a CR; a status patch through the subresource; a watch that sees
# the change; a ServiceAccount token for audience `cellroute`; and a TokenReview that
# authenticates it. Everything it creates lives in a fresh namespace. Exits non-zero on failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
DIR="${1:-$(mktemp -d "${TMPDIR:-/tmp}/cellroute-k8s-smoke.XXXXXX")}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
STARTED=0
cleanup() { if [[ $STARTED -eq 1 ]]; then "$HERE/apiserver.sh" stop "$DIR"; fi; }
trap cleanup EXIT

if ! { [[ -f $DIR/env ]] && "$HERE/apiserver.sh" status "$DIR" 2>/dev/null; }; then
  "$HERE/apiserver.sh" start "$DIR" >/dev/null
  [[ -e $DIR/local ]] && STARTED=1
fi
# shellcheck disable=SC1091
. "$DIR/env"
K=("$CELLROUTE_KUBECTL" --request-timeout=20s)
NS="smoke-$(date +%s)-$RANDOM"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

step "server $CELLROUTE_APISERVER_URL ($CELLROUTE_K8S_VERSION, $CELLROUTE_K8S_MODE)"
"${K[@]}" get ns
"${K[@]}" create namespace "$NS"

step "CRD routingconfigs.cellroute.dev (apply --validate=false)"
"${K[@]}" apply --validate=false -f - <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: routingconfigs.cellroute.dev
spec:
  group: cellroute.dev
  scope: Namespaced
  names: {plural: routingconfigs, singular: routingconfig, kind: RoutingConfig}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cells]
            x-kubernetes-validations:
            - {rule: "self.cells.size() > 0", message: "at least one cell"}
            properties:
              cells: {type: array, maxItems: 16, items: {type: string, maxLength: 63}}
          status:
            type: object
            properties:
              observedGeneration: {type: integer, format: int64}
              phase: {type: string}
EOF
"${K[@]}" wait --for=condition=Established crd/routingconfigs.cellroute.dev --timeout=30s

step "CR, status subresource, watch"
"${K[@]}" -n "$NS" create -f - <<'EOF'
apiVersion: cellroute.dev/v1alpha1
kind: RoutingConfig
metadata: {name: demo}
spec: {cells: [cell-a, cell-b]}
EOF
"${K[@]}" -n "$NS" get routingconfigs --watch --output-watch-events --request-timeout=6s \
  -o jsonpath='{.type} {.object.metadata.name} gen={.object.metadata.generation} status={.object.status}{"\n"}' \
  >"$DIR/smoke-watch.out" 2>&1 &
WATCH=$!
# Wait until the watch has delivered the initial ADDED event, then patch.
for _ in $(seq 1 50); do grep -q '^ADDED demo' "$DIR/smoke-watch.out" && break; sleep 0.1; done
"${K[@]}" -n "$NS" patch routingconfig demo --subresource=status --type=merge \
  -p '{"status":{"observedGeneration":1,"phase":"Ready"}}'
# A status change through the main resource is ignored when the status subresource is on.
"${K[@]}" -n "$NS" patch routingconfig demo --type=merge -p '{"status":{"phase":"Ignored"}}' >/dev/null
wait "$WATCH" || true
cat "$DIR/smoke-watch.out"
grep -q '^MODIFIED demo gen=1 status={"observedGeneration":1,"phase":"Ready"}' "$DIR/smoke-watch.out" ||
  fail "watch did not see the status change"
[[ $("${K[@]}" -n "$NS" get routingconfig demo -o jsonpath='{.status.phase}') == Ready ]] ||
  fail "status was changed through the main resource"

step "ServiceAccount token (audience cellroute) and TokenReview"
"${K[@]}" -n "$NS" create serviceaccount cellroute-smoke
TOKEN=$("${K[@]}" -n "$NS" create token cellroute-smoke --audience cellroute --duration 10m)
REVIEW=$("${K[@]}" create -o jsonpath='{.status.authenticated} {.status.user.username} {.status.audiences}' -f - <<EOF
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec:
  token: $TOKEN
  audiences: [cellroute]
EOF
)
echo "$REVIEW"
[[ $REVIEW == "true system:serviceaccount:$NS:cellroute-smoke "*cellroute* ]] ||
  fail "TokenReview did not authenticate the token"

"${K[@]}" delete namespace "$NS" --wait=false >/dev/null
printf '\nsmoke: OK\n'
