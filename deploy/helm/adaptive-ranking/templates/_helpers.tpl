{{- define "ranking.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ranking.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ranking.labels" -}}
{{ include "ranking.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ranking.secretName" -}}
{{- .Values.adminKey.existingSecret | default (printf "%s-admin" (include "ranking.fullname" .)) -}}
{{- end -}}

{{/* The signal, per pod: queue time summed over every model a request waits in, divided by the
ensemble's successful requests. Not an average over models: that under-reports it (server#8979). */}}
{{- define "ranking.queueSignal" -}}
{{- $w := .Values.prometheusRule.window -}}
sum by (namespace, pod) (rate(nv_inference_queue_duration_us{model=~"{{ join "|" .Values.prometheusRule.queueModels }}"}[{{ $w }}]))
/
clamp_min(sum by (namespace, pod) (rate(nv_inference_request_success{model="{{ .Values.prometheusRule.ensemble }}"}[{{ $w }}])), 1e-9)
{{- end -}}

{{- define "ranking.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
