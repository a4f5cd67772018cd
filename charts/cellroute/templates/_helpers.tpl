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
