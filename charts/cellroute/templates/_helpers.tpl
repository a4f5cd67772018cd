{{/*
Every named template here takes the root context of the chart that includes it. From a parent
chart, `.` is the parent's context: the templates then read cellroute's own values, Chart and
Release through `.Subcharts.cellroute` (see "cellroute.context"), so they work the same in this
chart and as a dependency. Under an alias, pass `.Subcharts.<alias>` instead of `.`.
*/}}

{{/*
The context the sidecar templates read: this chart's when they are rendered by cellroute itself,
the `cellroute` subchart's when they are included from a parent chart. Returns the key to use
with `index .Subcharts`, or "" for the context itself.
*/}}
{{- define "cellroute.subchartKey" -}}
{{- if and (hasKey . "Subcharts") .Subcharts (hasKey .Subcharts "cellroute") -}}
cellroute
{{- end -}}
{{- end -}}

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

{{/* An image reference: registry/repository:tag (tag defaults to cellroute's appVersion). */}}
{{- define "cellroute.image" -}}
{{- $root := index . 0 -}}{{- $repo := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry $repo (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* Name of the control plane's Service. */}}
{{- define "cellroute.controlPlane.serviceName" -}}
{{- printf "%s-control-plane" .Release.Name -}}
{{- end -}}

{{/* URL data planes use to reach the control plane: dataPlane.controlPlaneUrl, or this release's Service. */}}
{{- define "cellroute.controlPlane.url" -}}
{{- if .Values.dataPlane.controlPlaneUrl -}}
{{- .Values.dataPlane.controlPlaneUrl -}}
{{- else -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "wss" "ws" .Values.controlPlane.tls.enabled) (include "cellroute.controlPlane.serviceName" .) .Release.Namespace (int .Values.controlPlane.port) -}}
{{- end -}}
{{- end -}}

{{/* Names of the injector's objects. */}}
{{- define "cellroute.injection.webhookName" -}}
{{- printf "%s-inject" .Release.Name -}}
{{- end -}}
{{- define "cellroute.injection.secretName" -}}
{{- printf "%s-inject-tls" .Release.Name -}}
{{- end -}}
{{- define "cellroute.injection.configName" -}}
{{- printf "%s-inject" .Release.Name -}}
{{- end -}}

{{/* True when the injector is rendered. */}}
{{- define "cellroute.injection.enabled" -}}
{{- if and .Values.controlPlane.enabled .Values.injection.enabled -}}true{{- end -}}
{{- end -}}

{{/* "true" when `setting` ("auto", "true", "false") asks for a native sidecar on this cluster (1.29 and later for "auto"). */}}
{{- define "cellroute.native" -}}
{{- $root := index . 0 -}}{{- $setting := toString (index . 1) -}}
{{- if eq $setting "auto" -}}
{{- ternary "true" "false" (semverCompare ">=1.29.0-0" $root.Capabilities.KubeVersion.Version) -}}
{{- else -}}
{{- $setting -}}
{{- end -}}
{{- end -}}

{{/* The injector's sidecar settings (the control plane's --inject-config file). */}}
{{- define "cellroute.injection.config" -}}
{{- $dp := .Values.dataPlane -}}
{{- $config := dict
  "image" (include "cellroute.image" (list . $dp.image.repository))
  "imagePullPolicy" .Values.image.pullPolicy
  "controlPlaneUrl" (include "cellroute.controlPlane.url" .)
  "proxyPort" (int $dp.port)
  "adminPort" (int $dp.adminPort)
  "healthPort" (int $dp.healthPort)
  "routingConfig" $dp.routingConfig
  "shutdownDelaySeconds" (int $dp.shutdownDelaySeconds)
  "shutdownGraceSeconds" (int $dp.shutdownGraceSeconds)
  "fallbackConfigMap" $dp.fallbackConfigMap
  "adminTokenSecret" $dp.adminTokenSecret
  "resources" $dp.resources
  "nativeSidecar" (toString .Values.injection.nativeSidecar)
-}}
{{- toYaml $config -}}
{{- end -}}

{{/* Names of the injector's serving certificate: the Service's, and injection.certificate.dnsNames. */}}
{{- define "cellroute.injection.dnsNames" -}}
{{- $svc := include "cellroute.controlPlane.serviceName" . -}}
{{- $names := list (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) -}}
{{- join "," (concat $names .Values.injection.certificate.dnsNames) -}}
{{- end -}}
