{{/* Names and labels. */}}

{{- define "slotq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slotq.fullname" -}}
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

{{- define "slotq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "slotq.labels" -}}
helm.sh/chart: {{ include "slotq.chart" . }}
{{ include "slotq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slotq
{{- end }}

{{- define "slotq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slotq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component; call with (dict "root" $ "component" "workers"). */}}
{{- define "slotq.componentLabels" -}}
{{ include "slotq.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "slotq.componentSelectorLabels" -}}
{{ include "slotq.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "slotq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slotq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slotq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding DATABASE_URL, REDIS_URL and PAYMENT_WEBHOOK_SECRET. */}}
{{- define "slotq.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "slotq.fullname" . }}
{{- end }}
{{- end }}

{{/* Fails early, with a message, when no credentials are configured. */}}
{{- define "slotq.validate" -}}
{{- if not .Values.existingSecret }}
{{- if not .Values.postgresql.url }}
{{- fail "set postgresql.url (DATABASE_URL) or existingSecret" }}
{{- end }}
{{- if not .Values.redis.url }}
{{- fail "set redis.url (REDIS_URL) or existingSecret" }}
{{- end }}
{{- end }}
{{- if and .Values.workers.keda.enabled (eq .Values.workers.keda.trigger "redis") (not .Values.workers.keda.redis.address) }}
{{- fail "workers.keda.redis.address (host:port) is required with the redis trigger" }}
{{- end }}
{{- if and .Values.workers.keda.enabled (eq .Values.workers.keda.trigger "prometheus") (not .Values.workers.keda.prometheus.serverAddress) }}
{{- fail "workers.keda.prometheus.serverAddress is required with the prometheus trigger" }}
{{- end }}
{{- end }}

{{/* Restarts pods when their configuration changes. */}}
{{- define "slotq.configChecksum" -}}
{{- $cfg := dict "config" .Values.config "redis" .Values.redis "kafka" .Values.kafka "pg" .Values.postgresql "pay" .Values.paymentWebhookSecret "auth" .Values.auth "pii" .Values.pii "existing" .Values.existingSecret }}
{{- toJson $cfg | sha256sum }}
{{- end }}

{{/* PII keys as Secret stringData lines (the migration re-encrypts patient rows with them). */}}
{{- define "slotq.piiKeys" -}}
{{- with .Values.pii.keys }}
  PII_KEYS: {{ . | quote }}
{{- end }}
{{- with .Values.pii.indexKey }}
  PII_INDEX_KEY: {{ . | quote }}
{{- end }}
{{- end }}
