{{/* Name of the control plane's ServiceAccount. */}}
{{- define "cellroute.controlPlane.serviceAccountName" -}}
{{- default (printf "%s-control-plane" .Release.Name) .Values.controlPlane.serviceAccount.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "cellroute.labels" -}}
app.kubernetes.io/name: cellroute
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of the control plane. */}}
{{- define "cellroute.controlPlane.selector" -}}
app.kubernetes.io/name: cellroute
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{/* An image reference: registry/repository:tag (tag defaults to the appVersion). */}}
{{- define "cellroute.image" -}}
{{- $root := index . 0 -}}{{- $repo := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry $repo (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* URL data planes use to reach the control plane Service. */}}
{{- define "cellroute.controlPlane.url" -}}
{{- printf "%s://%s-control-plane.%s.svc:%d" (ternary "wss" "ws" .Values.controlPlane.tls.enabled) .Release.Name .Release.Namespace (int .Values.controlPlane.port) -}}
{{- end -}}
