{{/*
Names, labels and the checks that make a render fail closed. Every `fail` here is a refusal a
reviewer can rely on: the chart never renders an enclave that could run outside a confidential
VM, with a mutable image reference, or with the development `sim` platform.
*/}}

{{- define "medclave.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "medclave.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "medclave.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "medclave.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "medclave.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medclave.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "medclave.labels" -}}
{{ include "medclave.selectorLabels" . }}
app.kubernetes.io/part-of: medclave
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The release's pods, whatever their component: what the default-deny policy selects. */}}
{{- define "medclave.releaseSelector" -}}
app.kubernetes.io/name: {{ include "medclave.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The Confidential Containers runtime classes (installed by the CoCo operator or kata-deploy; the
chart never creates one). Fixed here, not a value: a value could be widened to "runc".
*/}}
{{- define "medclave.confidentialRuntimeClasses" -}}
kata-qemu-snp kata-qemu-tdx kata-qemu-nvidia-gpu-snp
{{- end -}}

{{- define "medclave.requireConfidential" -}}
{{- $classes := splitList " " (include "medclave.confidentialRuntimeClasses" .root) -}}
{{- if not (has .class $classes) -}}
{{- fail (printf "%s: runtimeClassName %q is not a Confidential Containers runtime class (one of %s)" .what (toString .class) (join ", " $classes)) -}}
{{- end -}}
{{- end -}}

{{/* An image by digest only: the agent policy and the measurement name exact bytes. */}}
{{- define "medclave.image" -}}
{{- $img := .image -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" (toString $img.digest)) -}}
{{- fail (printf "%s.image.digest must be sha256:<64 hex> (images are pinned by digest, never by tag)" .what) -}}
{{- end -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- end -}}

{{/*
Settings as MEDCLAVE_<SERVICE>_<FIELD> variables. Lists become JSON (pydantic-settings reads a
tuple field from JSON); everything else its string form.
*/}}
{{- define "medclave.settingsEnv" -}}
{{- range $key, $value := .settings }}
{{- if has $key $.reserved }}
{{- fail (printf "%s.settings.%s is set by the chart and may not be overridden" $.what $key) }}
{{- end }}
- name: {{ printf "%s%s" $.prefix (upper $key) }}
  {{- if or (kindIs "slice" $value) (kindIs "map" $value) }}
  value: {{ toJson $value | quote }}
  {{- else }}
  value: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The container security context every Medclave container gets. */}}
{{- define "medclave.containerSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "medclave.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Probes on the service's own port: /healthz for liveness, /readyz for readiness (ops/http.py). */}}
{{- define "medclave.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 5
  failureThreshold: {{ .startupFailures | default 24 }}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 15
  timeoutSeconds: 3
  failureThreshold: 4
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}
