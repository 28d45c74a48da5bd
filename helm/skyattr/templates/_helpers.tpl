{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "skyattr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "skyattr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "skyattr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "skyattr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skyattr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "skyattr.labels" -}}
helm.sh/chart: {{ include "skyattr.chart" . }}
{{ include "skyattr.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skyattr
{{- end -}}

{{- define "skyattr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "skyattr.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image: <repository>:<tag or appVersion>; with gpu.enabled image.cudaTag or "<tag>-cuda". */}}
{{- define "skyattr.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.gpu.enabled -}}
{{- $tag = .Values.image.cudaTag | default (printf "%s-cuda" $tag) -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "skyattr.metricsPort" -}}
{{- .Values.config.metrics_port | int -}}
{{- end -}}

{{/* Where the PVC (or emptyDir) is mounted: checkpoints/ for `run`, archive/ for `record`. */}}
{{- define "skyattr.dataDir" -}}/var/lib/skyattr{{- end -}}

{{/*
config.yaml for `skyattr run --config`: one `key: <JSON value>` line per option (JSON is YAML). toJson keeps large
integers such as edge_budget as digits (toYaml prints Helm's float64 20000000 as 2e+07, which PyYAML, and so the
daemon, reads as a string).
*/}}
{{- define "skyattr.configYaml" -}}
# skyattr daemon options (streamer.app.settings.Settings), rendered by the Helm chart from .Values.config
{{- range $key, $value := .Values.config }}
{{ $key }}: {{ toJson $value }}
{{- end }}
{{- end -}}

{{/* Checks across values that the JSON schema cannot express. */}}
{{- define "skyattr.validate" -}}
{{- $head := .Values.config.head | default 0.01 | float64 -}}
{{- $middle := .Values.config.middle | default 0.1 | float64 -}}
{{- if gt (addf $head $middle) 1.0 -}}
{{- fail (printf "config.head + config.middle must be <= 1 (got %v + %v)" $head $middle) -}}
{{- end -}}
{{- $proto := .Values.kafka.securityProtocol -}}
{{- if and (hasPrefix "SASL" $proto) (not .Values.kafka.sasl.existingSecret) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.existingSecret (a Secret with the SASL username and password)" $proto) -}}
{{- end -}}
{{- if and .Values.kafka.sasl.existingSecret $proto (not (hasPrefix "SASL" $proto)) -}}
{{- fail (printf "kafka.sasl.existingSecret is set but kafka.securityProtocol is %s; use SASL_SSL or SASL_PLAINTEXT (or leave it empty)" $proto) -}}
{{- end -}}
{{- if and .Values.kafka.sasl.existingSecret (not .Values.kafka.bootstrap) -}}
{{- fail "kafka.sasl.existingSecret is set but kafka.bootstrap is empty" -}}
{{- end -}}
{{- $host := .Values.config.metrics_host | default "" | toString -}}
{{- if or (hasPrefix "127." $host) (eq $host "localhost") (eq $host "::1") -}}
{{- fail (printf "config.metrics_host %s is a loopback address: the probes and the Service could not reach /metrics (use 0.0.0.0)" $host) -}}
{{- end -}}
{{- end -}}
