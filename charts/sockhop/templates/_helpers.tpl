{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "sockhop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the objects: fullnameOverride, else "<release>-<chart>" (just the
release name when it already contains the chart name). 63 characters at most,
as DNS labels allow.
*/}}
{{- define "sockhop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"chart-version" for the helm.sh/chart label.
*/}}
{{- define "sockhop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release, so they are the DaemonSet's
selector (immutable) and the Service's.
*/}}
{{- define "sockhop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sockhop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/*
Labels of the agent pods: selector labels plus part-of and managed-by, without
helm.sh/chart and app.kubernetes.io/version (a chart version bump alone must not
roll every agent; a new image does that by itself).
*/}}
{{- define "sockhop.podLabels" -}}
{{ include "sockhop.selectorLabels" . }}
app.kubernetes.io/part-of: sockhop
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels of every object the chart creates.
*/}}
{{- define "sockhop.labels" -}}
helm.sh/chart: {{ include "sockhop.chart" . }}
{{ include "sockhop.podLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
Name of the agent's ServiceAccount.
*/}}
{{- define "sockhop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sockhop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest, else repository:tag (tag defaults to appVersion).
*/}}
{{- define "sockhop.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Whether the headless metrics Service is rendered.
*/}}
{{- define "sockhop.metricsService" -}}
{{- if or .Values.metrics.service.enabled .Values.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{/*
Name of the metrics Service: "<fullname>-metrics", within the 63 characters of a
DNS label.
*/}}
{{- define "sockhop.metricsServiceName" -}}
{{- printf "%s-metrics" (include "sockhop.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
"true" when the cluster has securityContext.appArmorProfile (Kubernetes 1.30+);
older ones take the AppArmor annotation instead.
*/}}
{{- define "sockhop.appArmorField" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{/*
appArmorProfile written as the pre-1.30 annotation value.
*/}}
{{- define "sockhop.appArmorAnnotation" -}}
{{- $p := .Values.appArmorProfile }}
{{- if eq $p.type "Unconfined" }}unconfined
{{- else if eq $p.type "RuntimeDefault" }}runtime/default
{{- else }}localhost/{{ $p.localhostProfile }}
{{- end }}
{{- end }}
