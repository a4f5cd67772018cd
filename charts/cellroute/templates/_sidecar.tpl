{{/*
The data-plane sidecar, for an application's pod (in a chart that depends on cellroute):

  spec:
    terminationGracePeriodSeconds: {{ include "cellroute.dataPlane.terminationGracePeriodSeconds" . }}
    initContainers:
      {{- include "cellroute.dataPlane.initContainers" . | nindent 4 }}
    containers:
      - name: app
        ...
      {{- include "cellroute.dataPlane.containers" . | nindent 4 }}
    volumes:
      {{- include "cellroute.dataPlane.volumes" . | nindent 4 }}

`initContainers` gets the sidecar where it runs as a native sidecar (dataPlane.nativeSidecar:
"auto" means Kubernetes 1.29 and later), `containers` everywhere else; exactly one of the two
renders it. `cellroute.dataPlane.container` is the plain container alone.

The proxy (dataPlane.port) and the admin API (dataPlane.adminPort) listen on loopback only; the
kubelet probes /healthz and /readyz on the health port (dataPlane.healthPort), which serves
nothing else. The sidecar reaches the control plane with a projected ServiceAccount token
(audience `cellroute`) and keeps its last-known-good cache in an emptyDir.

The injector renders the same container (control-plane/src/inject/sidecar.rs); a test keeps the
two equal.
*/}}

{{- define "cellroute.dataPlane.container" -}}
{{- $c := . -}}{{- with include "cellroute.subchartKey" . }}{{ $c = index $.Subcharts . }}{{ end -}}
{{- include "cellroute.dataPlane.sidecar" (list $c false) -}}
{{- end -}}

{{- define "cellroute.dataPlane.nativeSidecar" -}}
{{- $c := . -}}{{- with include "cellroute.subchartKey" . }}{{ $c = index $.Subcharts . }}{{ end -}}
{{- include "cellroute.dataPlane.sidecar" (list $c true) -}}
{{- end -}}

{{- define "cellroute.dataPlane.initContainers" -}}
{{- $c := . -}}{{- with include "cellroute.subchartKey" . }}{{ $c = index $.Subcharts . }}{{ end -}}
{{- if eq (include "cellroute.native" (list $c $c.Values.dataPlane.nativeSidecar)) "true" -}}
{{- include "cellroute.dataPlane.sidecar" (list $c true) -}}
{{- end -}}
{{- end -}}

{{- define "cellroute.dataPlane.containers" -}}
{{- $c := . -}}{{- with include "cellroute.subchartKey" . }}{{ $c = index $.Subcharts . }}{{ end -}}
{{- if ne (include "cellroute.native" (list $c $c.Values.dataPlane.nativeSidecar)) "true" -}}
{{- include "cellroute.dataPlane.sidecar" (list $c false) -}}
{{- end -}}
{{- end -}}

{{/* The pod's grace: the sidecar's shutdown delay and grace, plus 5 s, so SIGKILL never cuts its drain. */}}
{{- define "cellroute.dataPlane.terminationGracePeriodSeconds" -}}
{{- $c := . -}}{{- with include "cellroute.subchartKey" . }}{{ $c = index $.Subcharts . }}{{ end -}}
{{- add (int $c.Values.dataPlane.shutdownDelaySeconds) (int $c.Values.dataPlane.shutdownGraceSeconds) 5 -}}
{{- end -}}

{{/* The container; (list CONTEXT NATIVE). */}}
{{- define "cellroute.dataPlane.sidecar" -}}
{{- $root := index . 0 -}}{{- $native := index . 1 -}}
{{- $dp := $root.Values.dataPlane -}}
- name: cellroute-data-plane
  image: {{ include "cellroute.image" (list $root $dp.image.repository) }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --listen=127.0.0.1:{{ $dp.port }}
    - --admin-listen=127.0.0.1:{{ $dp.adminPort }}
    - --health-listen=0.0.0.0:{{ $dp.healthPort }}
    - --control-plane={{ include "cellroute.controlPlane.url" $root }}
    - --token-file=/var/run/secrets/cellroute/token
    - --cache-dir=/var/cache/cellroute
    - --shutdown-delay={{ $dp.shutdownDelaySeconds }}s
    - --shutdown-grace={{ $dp.shutdownGraceSeconds }}s
    - --log-format=json
    {{- if $dp.fallbackConfigMap }}
    - --config=/etc/cellroute/routing/routing.yaml
    {{- end }}
    {{- if $dp.adminTokenSecret }}
    - --admin-token-file=/etc/cellroute/admin/token
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: CELLROUTE_ROUTING_CONFIG
      value: {{ default "$(POD_NAMESPACE)/routes" $dp.routingConfig | quote }}
  ports:
    - {name: cellroute-probe, containerPort: {{ $dp.healthPort }}}
  livenessProbe:
    httpGet: {path: /healthz, port: cellroute-probe}
  readinessProbe:
    httpGet: {path: /readyz, port: cellroute-probe}
  resources:
    {{- toYaml $dp.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: cellroute-token, mountPath: /var/run/secrets/cellroute, readOnly: true}
    - {name: cellroute-cache, mountPath: /var/cache/cellroute}
    {{- if $dp.fallbackConfigMap }}
    - {name: cellroute-routing, mountPath: /etc/cellroute/routing, readOnly: true}
    {{- end }}
    {{- if $dp.adminTokenSecret }}
    - {name: cellroute-admin-token, mountPath: /etc/cellroute/admin, readOnly: true}
    {{- end }}
{{- end -}}

{{- define "cellroute.dataPlane.volumes" -}}
{{- $c := . -}}{{- with include "cellroute.subchartKey" . }}{{ $c = index $.Subcharts . }}{{ end -}}
{{- $dp := $c.Values.dataPlane -}}
- name: cellroute-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: cellroute
          expirationSeconds: 3600
- name: cellroute-cache
  emptyDir: {sizeLimit: 64Mi}
{{- if $dp.fallbackConfigMap }}
- name: cellroute-routing
  configMap:
    name: {{ $dp.fallbackConfigMap }}
{{- end }}
{{- if $dp.adminTokenSecret }}
- name: cellroute-admin-token
  secret:
    secretName: {{ $dp.adminTokenSecret }}
{{- end }}
{{- end -}}
