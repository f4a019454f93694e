{{/* Names and labels shared by every template. */}}

{{- define "dualdistill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dualdistill.fullname" -}}
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

{{- define "dualdistill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dualdistill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dualdistill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dualdistill.labels" -}}
helm.sh/chart: {{ include "dualdistill.chart" . }}
{{ include "dualdistill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The teacher pods (not Redis, not the test pod). */}}
{{- define "dualdistill.teacherSelectorLabels" -}}
{{ include "dualdistill.selectorLabels" . }}
app.kubernetes.io/component: teacher
{{- end }}

{{- define "dualdistill.redisSelectorLabels" -}}
{{ include "dualdistill.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "dualdistill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dualdistill.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dualdistill.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding `tenant:key` lines: the user's, or the chart's own. */}}
{{- define "dualdistill.secretName" -}}
{{- default (printf "%s-api-keys" (include "dualdistill.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* DUALDISTILL_CACHE: the chart's Redis, an external Redis, or whatever settings.cache says. */}}
{{- define "dualdistill.cache" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis:6379/0" (include "dualdistill.fullname" .) }}
{{- else if .Values.redis.url }}
{{- .Values.redis.url }}
{{- else }}
{{- default "memory" (index .Values.server.settings "cache") }}
{{- end }}
{{- end }}

{{/* Grace period: the preStop sleep, then the server's drain, then a margin for process exit. */}}
{{- define "dualdistill.terminationGracePeriodSeconds" -}}
{{- if gt (int .Values.server.terminationGracePeriodSeconds) 0 }}
{{- int .Values.server.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int (ceil .Values.server.drainSeconds)) (int .Values.server.preStopSleepSeconds) 15 }}
{{- end }}
{{- end }}
