{{/* Names are fixed (one podckpt per cluster, like its cluster-scoped webhook configuration);
the namespace is the release's. */}}

{{- define "podckpt.labels" -}}
app.kubernetes.io/part-of: podckpt
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "podckpt.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "podckpt.operatorImage" -}}
{{- .Values.image.operator | default (printf "%s/podckpt-operator:%s" (trimSuffix "/" .Values.image.registry) (include "podckpt.tag" .)) -}}
{{- end -}}

{{- define "podckpt.bundleImage" -}}
{{- .Values.image.bundle | default (printf "%s/podckpt-bundle:%s" (trimSuffix "/" .Values.image.registry) (include "podckpt.tag" .)) -}}
{{- end -}}

{{- define "podckpt.keyPrefix" -}}
{{- $p := required "keyPrefix must not be empty" .Values.keyPrefix -}}
{{- if hasSuffix "/" $p }}{{ $p }}{{ else }}{{ printf "%s/" $p }}{{ end -}}
{{- end -}}

{{/* The namespaces no webhook entry ever sees: the configured ones and the release's. */}}
{{- define "podckpt.excludedNamespaces" -}}
{{- toJson (uniq (append .Values.excludedNamespaces .Release.Namespace)) -}}
{{- end -}}

{{/* Environment shared by both components. */}}
{{- define "podckpt.env" -}}
- name: PODCKPT_OPERATOR_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: PODCKPT_KEY_PREFIX
  value: {{ include "podckpt.keyPrefix" . | quote }}
- name: PODCKPT_EXCLUDED_NAMESPACES
  value: {{ toJson .Values.excludedNamespaces | quote }}
- name: PODCKPT_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: PODCKPT_METRICS_PORT
  value: {{ ternary .Values.metrics.port 0 .Values.metrics.enabled | quote }}
- name: PODCKPT_HEALTH_PORT
  value: {{ .Values.healthPort | quote }}
# glibc's per-thread malloc arenas cost resident memory for nothing here.
- name: MALLOC_ARENA_MAX
  value: "2"
{{- range $name, $value := .Values.settings }}
- name: {{ printf "PODCKPT_%s" (upper $name) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "podckpt.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "podckpt.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* kopf's health endpoint: 200 once the operator started, with its probe results. */}}
{{- define "podckpt.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: health
  initialDelaySeconds: 10
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 5
  timeoutSeconds: 5
{{- end -}}

{{- define "podckpt.ports" -}}
- name: health
  containerPort: {{ .Values.healthPort }}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
{{- end }}
{{- end -}}

{{- define "podckpt.scrapeAnnotations" -}}
{{- if and .Values.metrics.enabled .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* The parts every webhook entry shares. */}}
{{- define "podckpt.webhookEntry" -}}
admissionReviewVersions: [v1]
sideEffects: NoneOnDryRun
failurePolicy: {{ .failurePolicy }}
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
reinvocationPolicy: Never
matchPolicy: Equivalent
clientConfig:
  service: {name: podckpt-webhook, namespace: {{ .Release.Namespace }}, path: /inject, port: 443}
  {{- with .caBundle }}
  caBundle: {{ . }}
  {{- end }}
rules:
  - operations: [CREATE]
    apiGroups: [""]
    apiVersions: [v1]
    resources: [pods]
    scope: Namespaced
{{- end -}}
