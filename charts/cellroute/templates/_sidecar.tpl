{{/*
The data-plane sidecar, to add to an application's pod:

  containers:
    {{- include "cellroute.dataPlane.container" . | nindent 4 }}
  volumes:
    {{- include "cellroute.dataPlane.volumes" . | nindent 4 }}

It reaches the control plane with a projected ServiceAccount token (audience `cellroute`), keeps
its last-known-good cache in an emptyDir, can fall back to a routing file from a ConfigMap, and
is probed on its admin port.
*/}}
{{- define "cellroute.dataPlane.container" -}}
- name: cellroute-data-plane
  image: {{ include "cellroute.image" (list . .Values.dataPlane.image.repository) }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - run
    - --listen=0.0.0.0:{{ .Values.dataPlane.port }}
    - --admin-listen=0.0.0.0:{{ .Values.dataPlane.adminPort }}
    - --control-plane={{ include "cellroute.controlPlane.url" . }}
    - --token-file=/var/run/secrets/cellroute/token
    - --cache-dir=/var/cache/cellroute
    - --log-format=json
    {{- if .Values.dataPlane.fallbackConfigMap }}
    - --config=/etc/cellroute/routing/routing.yaml
    {{- end }}
    {{- if .Values.dataPlane.adminTokenSecret }}
    - --admin-token-file=/etc/cellroute/admin/token
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: CELLROUTE_ROUTING_CONFIG
      value: {{ default "$(POD_NAMESPACE)/routes" .Values.dataPlane.routingConfig | quote }}
  ports:
    - {name: cellroute-proxy, containerPort: {{ .Values.dataPlane.port }}}
    - {name: cellroute-admin, containerPort: {{ .Values.dataPlane.adminPort }}}
  livenessProbe:
    httpGet: {path: /healthz, port: cellroute-admin}
  readinessProbe:
    httpGet: {path: /readyz, port: cellroute-admin}
  resources:
    {{- toYaml .Values.dataPlane.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: cellroute-token, mountPath: /var/run/secrets/cellroute, readOnly: true}
    - {name: cellroute-cache, mountPath: /var/cache/cellroute}
    {{- if .Values.dataPlane.fallbackConfigMap }}
    - {name: cellroute-routing, mountPath: /etc/cellroute/routing, readOnly: true}
    {{- end }}
    {{- if .Values.dataPlane.adminTokenSecret }}
    - {name: cellroute-admin-token, mountPath: /etc/cellroute/admin, readOnly: true}
    {{- end }}
{{- end -}}

{{- define "cellroute.dataPlane.volumes" -}}
- name: cellroute-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: cellroute
          expirationSeconds: 3600
- name: cellroute-cache
  emptyDir: {sizeLimit: 64Mi}
{{- if .Values.dataPlane.fallbackConfigMap }}
- name: cellroute-routing
  configMap:
    name: {{ .Values.dataPlane.fallbackConfigMap }}
{{- end }}
{{- if .Values.dataPlane.adminTokenSecret }}
- name: cellroute-admin-token
  secret:
    secretName: {{ .Values.dataPlane.adminTokenSecret }}
{{- end }}
{{- end -}}
