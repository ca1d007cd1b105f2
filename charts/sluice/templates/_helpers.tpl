{{/* The cluster's name: prefixes what the operator makes. */}}
{{- define "sluice.cluster" -}}
{{- default .Release.Name .Values.clusterName | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The operator's Deployment, ServiceAccount and Role. */}}
{{- define "sluice.operator" -}}
{{- printf "%s-operator" (include "sluice.cluster" .) -}}
{{- end -}}

{{- define "sluice.labels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ include "sluice.cluster" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sluice.operatorSelector" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ include "sluice.cluster" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sluice.nodeImage" -}}
{{- printf "%s:%s" .Values.nodes.image.repository (default .Chart.AppVersion .Values.nodes.image.tag) -}}
{{- end -}}

{{- define "sluice.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{/* A map with every value a string (whole numbers without exponents):
what the operator's settings expect for quantities and configs. */}}
{{- define "sluice.strings" -}}
{{- $out := dict -}}
{{- range $k, $v := (. | default dict) -}}
{{- if and (kindIs "float64" $v) (eq (float64 (int64 $v)) $v) -}}
{{- $_ := set $out $k (int64 $v | toString) -}}
{{- else -}}
{{- $_ := set $out $k (toString $v) -}}
{{- end -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}

{{/* The operator's settings file (operator/src/config.rs). */}}
{{- define "sluice.settings" -}}
{{- $n := .Values.nodes -}}
{{- if gt (int $n.minNodes) (int $n.maxNodes) -}}
{{- fail (printf "nodes.maxNodes (%v) is below nodes.minNodes (%v)" $n.maxNodes $n.minNodes) -}}
{{- end -}}
clusterName: {{ include "sluice.cluster" . | quote }}
nodeImage: {{ include "sluice.nodeImage" . }}
imagePullPolicy: {{ $n.image.pullPolicy }}
minNodes: {{ $n.minNodes | int64 }}
maxNodes: {{ $n.maxNodes | int64 }}
storageSize: {{ $n.storage.size | quote }}
{{- with $n.storage.className }}
storageClass: {{ . | quote }}
{{- end }}
requests: {{ include "sluice.strings" $n.resources.requests }}
limits: {{ include "sluice.strings" $n.resources.limits }}
{{- with $n.rackTopologyKey }}
rackTopologyKey: {{ . | quote }}
{{- end }}
applyRackRbac: false
kafkaPort: {{ $n.ports.kafka | int64 }}
replicationPort: {{ $n.ports.replication | int64 }}
adminPort: {{ $n.ports.admin | int64 }}
advertise: {{ $n.advertise }}
topicDefaults: {{ include "sluice.strings" $n.topicDefaults }}
nodeLeaseMs: {{ $n.leaseMs | int64 }}
controllerLeaseMs: {{ .Values.operator.leaseMs | int64 }}
statusIntervalMs: {{ .Values.operator.statusIntervalMs | int64 }}
groupStatusIntervalMs: {{ .Values.operator.groupStatusIntervalMs | int64 }}
maxConcurrentMoves: {{ $n.reassignment.maxConcurrentMoves | int64 }}
reassignmentThrottleBytesPerSec: {{ $n.reassignment.throttleBytesPerSec | int64 }}
{{- $sec := .Values.security }}
security:
  tls: {{ $sec.tls }}
  {{- if eq $sec.tls "certManager" }}
  {{- if not $sec.certManager.issuer.name }}
  {{- fail "security.tls is certManager: set security.certManager.issuer.name" }}
  {{- end }}
  certManagerIssuer:
    name: {{ $sec.certManager.issuer.name | quote }}
    kind: {{ $sec.certManager.issuer.kind | quote }}
  {{- end }}
  authentication: {{ $sec.authentication }}
  authorizer: {{ $sec.authorizer }}
  superUsers: {{ toJson $sec.superUsers }}
  caValidityDays: {{ $sec.caValidityDays | int64 }}
  certValidityDays: {{ $sec.certValidityDays | int64 }}
{{- end -}}
