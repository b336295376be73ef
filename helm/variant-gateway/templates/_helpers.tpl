{{/*
Names, labels and shared snippets of the variant-gateway chart.
*/}}

{{- define "variant-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped prefix of every object name. */}}
{{- define "variant-gateway.fullname" -}}
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

{{- define "variant-gateway.gatewayName" -}}
{{- include "variant-gateway.fullname" . | trunc 55 | trimSuffix "-" }}
{{- end }}

{{- define "variant-gateway.tritonName" -}}
{{- printf "%s-triton" (include "variant-gateway.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "variant-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "gateway"). */}}
{{- define "variant-gateway.labels" -}}
helm.sh/chart: {{ include "variant-gateway.chart" .ctx }}
{{ include "variant-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: variant-gateway
{{- end }}

{{/*
Selector labels; pass (dict "ctx" $ "component" "gateway"). The ServiceMonitors take the
scrape job name from app.kubernetes.io/component, so the rules see job="gateway" and
job="triton" as in deploy/prometheus/prometheus.yml.
*/}}
{{- define "variant-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "variant-gateway.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "variant-gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "variant-gateway.gatewayName" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "variant-gateway.gatewayImage" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) }}
{{- end }}

{{- define "variant-gateway.modelsClaimName" -}}
{{- default (printf "%s-models" (include "variant-gateway.fullname" .)) .Values.modelRepository.pvc.existingClaim }}
{{- end }}

{{/*
One gateway setting as an environment variable value: lists as JSON (pydantic-settings
parses them so), whole numbers without an exponent, everything else as written.
*/}}
{{- define "variant-gateway.envValue" -}}
{{- if kindIs "slice" . }}
{{- toJson . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* The model repository volume of a pod. */}}
{{- define "variant-gateway.modelsVolume" -}}
- name: models
{{- if eq .Values.modelRepository.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "variant-gateway.modelsClaimName" . }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelRepository.objectStorage.sizeLimit }}
- name: fetch-tmp
  emptyDir: {}
{{- end }}
{{- end }}

{{/* Init container copying an object-storage repository into the models volume. */}}
{{- define "variant-gateway.modelsInitContainers" -}}
{{- if eq .Values.modelRepository.source "objectStorage" }}
{{- $os := .Values.modelRepository.objectStorage }}
- name: fetch-models
  image: {{ printf "%s:%s" $os.image.repository $os.image.tag | quote }}
  imagePullPolicy: {{ $os.image.pullPolicy }}
  args:
    - s3
    - sync
    - --only-show-errors
    {{- with $os.endpointUrl }}
    - --endpoint-url
    - {{ . | quote }}
    {{- end }}
    - {{ $os.url | quote }}
    - {{ .Values.modelRepository.mountPath | quote }}
  env:
    # aws-cli keeps its caches under HOME; the image's /root is not writable as non-root.
    - name: HOME
      value: /tmp
    {{- with $os.region }}
    - name: AWS_DEFAULT_REGION
      value: {{ . | quote }}
    {{- end }}
    {{- with $os.credentialsSecret }}
    - name: AWS_ACCESS_KEY_ID
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: AWS_ACCESS_KEY_ID
    - name: AWS_SECRET_ACCESS_KEY
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: AWS_SECRET_ACCESS_KEY
    {{- end }}
  volumeMounts:
    - name: models
      mountPath: {{ .Values.modelRepository.mountPath }}
    - name: fetch-tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/* The Secret holding the gateway's key file. */}}
{{- define "variant-gateway.authSecretName" -}}
{{- default (printf "%s-keys" (include "variant-gateway.gatewayName" .)) .Values.gateway.auth.existingSecret }}
{{- end }}

{{/* Where the gateway reads its mounted Secrets (directories, so updates arrive in place). */}}
{{- define "variant-gateway.secretsDir" -}}/etc/variant-gateway{{- end }}

{{/*
Gateway settings the chart derives from gateway.auth, gateway.tls and gateway.tritonTLS:
the mounted files' paths. Merged over gateway.config by the ConfigMap.
*/}}
{{- define "variant-gateway.securityConfig" -}}
{{- $g := .Values.gateway }}
{{- $dir := include "variant-gateway.secretsDir" . }}
{{- $out := dict }}
{{- if $g.auth.enabled }}
{{- $_ := set $out "auth_keys_file" (printf "%s/auth/%s" $dir $g.auth.secretKey) }}
{{- if $g.auth.protectMetrics }}{{ $_ := set $out "auth_open_metrics" false }}{{ end }}
{{- end }}
{{- if $g.tls.enabled }}
{{- $_ := set $out "tls_cert_file" (printf "%s/tls/tls.crt" $dir) }}
{{- $_ := set $out "tls_key_file" (printf "%s/tls/tls.key" $dir) }}
{{- if $g.tls.clientCA.enabled }}
{{- $_ := set $out "tls_client_ca_file" (printf "%s/client-ca/%s" $dir $g.tls.clientCA.secretKey) }}
{{- end }}
{{- end }}
{{- if $g.tritonTLS.enabled }}
{{- $_ := set $out "triton_tls" true }}
{{- $_ := set $out "triton_tls_ca_file" (printf "%s/triton-tls/ca.crt" $dir) }}
{{- if $g.tritonTLS.mutual }}
{{- $_ := set $out "triton_tls_cert_file" (printf "%s/triton-tls/tls.crt" $dir) }}
{{- $_ := set $out "triton_tls_key_file" (printf "%s/triton-tls/tls.key" $dir) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The gateway's probe handler: HTTP(S) on the http port, or TCP under mutual TLS. */}}
{{- define "variant-gateway.probeHandler" -}}
{{- $tls := .ctx.Values.gateway.tls }}
{{- if and $tls.enabled $tls.clientCA.enabled }}
tcpSocket:
  port: http
{{- else }}
httpGet:
  path: {{ .path }}
  port: http
  {{- if $tls.enabled }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end }}

{{/* Fails rendering on values that cannot work together. */}}
{{- define "variant-gateway.validate" -}}
{{- if and (eq .Values.modelRepository.source "objectStorage") (not .Values.modelRepository.objectStorage.url) }}
{{- fail "modelRepository.objectStorage.url is required when modelRepository.source is objectStorage" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.customMetric.enabled) (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) }}
{{- fail "autoscaling needs a metric: set autoscaling.targetCPUUtilizationPercentage or enable autoscaling.customMetric" }}
{{- end }}
{{- $g := .Values.gateway }}
{{- if and $g.auth.enabled (not $g.auth.existingSecret) (empty $g.auth.keys) }}
{{- fail "gateway.auth.enabled needs gateway.auth.keys or gateway.auth.existingSecret" }}
{{- end }}
{{- if and $g.tls.enabled (not $g.tls.secretName) }}
{{- fail "gateway.tls.enabled needs gateway.tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if and $g.tls.clientCA.enabled (not $g.tls.enabled) }}
{{- fail "gateway.tls.clientCA.enabled (mutual TLS) needs gateway.tls.enabled" }}
{{- end }}
{{- if and $g.tritonTLS.enabled (not (or $g.tritonTLS.secretName .Values.triton.tls.secretName)) }}
{{- fail "gateway.tritonTLS.enabled needs gateway.tritonTLS.secretName or triton.tls.secretName" }}
{{- end }}
{{- if and .Values.triton.tls.enabled (not .Values.triton.tls.secretName) }}
{{- fail "triton.tls.enabled needs triton.tls.secretName" }}
{{- end }}
{{- if and .Values.triton.enabled .Values.triton.tls.enabled (not $g.tritonTLS.enabled) (eq (toString $g.config.backend) "triton") }}
{{- fail "triton.tls.enabled with backend triton needs gateway.tritonTLS.enabled, or the gateway cannot connect" }}
{{- end }}
{{- $grace := .Values.gateway.config.shutdown_grace_s | default 5.0 | float64 }}
{{- if le (float64 .Values.gateway.terminationGracePeriodSeconds) (addf (float64 .Values.gateway.preStopSleepSeconds) $grace) }}
{{- fail "gateway.terminationGracePeriodSeconds must exceed gateway.preStopSleepSeconds plus gateway.config.shutdown_grace_s" }}
{{- end }}
{{- end }}
