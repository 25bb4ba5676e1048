{{/*
Names, labels and the namespace lists every template shares.
*/}}

{{- define "agent-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-operator.fullname" -}}
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

{{- define "agent-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agent-operator.labels" -}}
helm.sh/chart: {{ include "agent-operator.chart" . }}
{{ include "agent-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agent-operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "agent-operator.serviceAccountName" -}}
{{- default (include "agent-operator.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The user name the API server gives the operator: admission policies compare against it. */}}
{{- define "agent-operator.operatorUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "agent-operator.serviceAccountName" . }}
{{- end }}

{{- define "agent-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "agent-operator.runtimeImage" -}}
{{- $image := .Values.defaultPool.image }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}

{{/* More than one replica: Kopf peering (one active operator, the others on standby). */}}
{{- define "agent-operator.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* Namespaces (JSON list) whose step ServiceAccount and default AgentPool the chart makes. */}}
{{- define "agent-operator.stepNamespaces" -}}
{{- if .Values.steps.namespaces }}
{{- .Values.steps.namespaces | uniq | toJson }}
{{- else if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Namespaces (JSON list) where the operator may get Secrets; unused with clusterWideSecrets. */}}
{{- define "agent-operator.secretNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else if .Values.rbac.secretNamespaces }}
{{- .Values.rbac.secretNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Admission policy bindings apply in the watched namespaces only, when they are listed. */}}
{{- define "agent-operator.policyScope" -}}
{{- if .Values.watchNamespaces }}
matchResources:
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values:
          {{- toYaml (.Values.watchNamespaces | uniq) | nindent 10 }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security Standard, for the pod and for each container. */}}
{{- define "agent-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "agent-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Refusals the schema cannot phrase well. */}}
{{- define "agent-operator.validate" -}}
{{- if and .Values.approvals.forbidSelfApproval (not (and .Values.admission.enabled .Values.admission.mutatingPolicies)) }}
{{- fail "approvals.forbidSelfApproval needs admission.enabled and admission.mutatingPolicies: the AgentTask's creator is recorded by a MutatingAdmissionPolicy" }}
{{- end }}
{{- end }}
