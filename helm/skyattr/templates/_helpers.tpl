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
{{- include "skyattr.imageFor" (dict "root" . "gpu" .Values.gpu.enabled) -}}
{{- end -}}

{{/* The image of a container that computes on a GPU or not: (dict "root" $ "gpu" BOOL). */}}
{{- define "skyattr.imageFor" -}}
{{- $v := .root.Values -}}
{{- $tag := $v.image.tag | default .root.Chart.AppVersion -}}
{{- if .gpu -}}
{{- $tag = $v.image.cudaTag | default (printf "%s-cuda" $tag) -}}
{{- end -}}
{{- printf "%s:%s" $v.image.repository $tag -}}
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

{{/*
The environment every skyattr container shares: caches on the /tmp emptyDir (the root filesystem is read-only), the
compilation cache at .cache, the Kafka connection (SKYATTR_* variables, SASL credentials from the Secret), extraEnv.
Called with (dict "root" $ "cache" PATH).
*/}}
{{- define "skyattr.env" -}}
{{- $kafka := .root.Values.kafka -}}
{{- $protocol := $kafka.securityProtocol | default (ternary "SASL_SSL" "" (ne $kafka.sasl.existingSecret "")) -}}
# The root filesystem is read-only: caches (matplotlib, JAX, Python) go to the /tmp emptyDir.
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
# compiled kernels kept across restarts where the path is on a volume
- name: SKYATTR_COMPILATION_CACHE
  value: {{ .cache }}
{{- with $kafka.bootstrap }}
- name: SKYATTR_KAFKA_BOOTSTRAP
  value: {{ . | quote }}
{{- end }}
{{- with $protocol }}
- name: SKYATTR_KAFKA_SECURITY_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with $kafka.sasl.existingSecret }}
- name: SKYATTR_KAFKA_SASL_MECHANISM
  value: {{ $kafka.sasl.mechanism | quote }}
- name: SKYATTR_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $kafka.sasl.usernameKey }}
- name: SKYATTR_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $kafka.sasl.passwordKey }}
{{- end }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one role of the distributed mode: (dict "root" $ "role" NAME). */}}
{{- define "skyattr.roleSelectorLabels" -}}
{{ include "skyattr.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* A pod template's labels and annotations (the config checksum rolls pods on a config change):
(dict "root" $ "component" NAME). */}}
{{- define "skyattr.podMetadata" -}}
labels:
  {{- include "skyattr.labels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include "skyattr.configYaml" .root | sha256sum }}
  {{- with .root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The volumes every container mounts: the config and the /tmp emptyDir (the root filesystem is read-only). */}}
{{- define "skyattr.baseVolumes" -}}
- name: config
  configMap:
    name: {{ include "skyattr.fullname" . }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* The pod spec parts every role shares (service account, pull secrets, priority, pod security context). */}}
{{- define "skyattr.podCommon" -}}
serviceAccountName: {{ include "skyattr.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Probes of a role's metrics endpoint: startup and liveness on /healthz, readiness on /readyz. */}}
{{- define "skyattr.probes" -}}
{{- $p := .Values.probes -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
{{- end -}}

{{/* A container's resources, with the nvidia.com/gpu limit when "gpu": (dict "root" $ "resources" R "gpu" BOOL). */}}
{{- define "skyattr.resources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if .gpu -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" (.root.Values.gpu.count | int) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* nodeSelector, tolerations and affinity of a pod, with the GPU ones when "gpu": (dict "root" $ "gpu" BOOL). */}}
{{- define "skyattr.scheduling" -}}
{{- $v := .root.Values -}}
{{- $nodeSelector := deepCopy ($v.nodeSelector | default dict) -}}
{{- if .gpu -}}
{{- $nodeSelector = merge $nodeSelector ($v.gpu.nodeSelector | default dict) -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := $v.tolerations | default list -}}
{{- if .gpu -}}
{{- $tolerations = concat $tolerations ($v.gpu.tolerations | default list) -}}
{{- end -}}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
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
{{- if and (eq .Values.mode "distributed") (not .Values.kafka.bootstrap) -}}
{{- fail "mode distributed needs kafka.bootstrap: ingest, workers and attributor talk only through Kafka" -}}
{{- end -}}
{{- if and (eq .Values.mode "distributed") .Values.record.enabled -}}
{{- fail "record.enabled is for mode single (a container beside the daemon); in mode distributed run `skyattr record` apart" -}}
{{- end -}}
{{- $host := .Values.config.metrics_host | default "" | toString -}}
{{- if or (hasPrefix "127." $host) (eq $host "localhost") (eq $host "::1") -}}
{{- fail (printf "config.metrics_host %s is a loopback address: the probes and the Service could not reach /metrics (use 0.0.0.0)" $host) -}}
{{- end -}}
{{- end -}}
