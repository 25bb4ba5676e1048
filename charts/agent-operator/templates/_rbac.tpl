{{- /*
The operator's rules on namespaced resources: exactly the verbs agent_operator/kube and
Kopf use, nothing more. Granted by a ClusterRole when the operator watches the whole
cluster, by a Role in each watched namespace otherwise.
*/}}
{{- define "agent-operator.operatorRules" -}}
# Kopf watches and patches (finalizers, its annotations); the task loop patches status.
- apiGroups: [agentoperator.io]
  resources: [agenttasks]
  verbs: [list, watch, patch]
- apiGroups: [agentoperator.io]
  resources: [agenttasks/status]
  verbs: [patch]
# Only for clusters that enforce OwnerReferencesPermissionEnforcement: Jobs and
# ApprovalRequests are owned by their task with blockOwnerDeletion.
- apiGroups: [agentoperator.io]
  resources: [agenttasks/finalizers]
  verbs: [update]
# The operator creates, expires (status) and withdraws (delete) approval requests; Kopf
# watches them and patches its own annotations. Deciding needs the `approve` verb, which
# it does not have.
- apiGroups: [agentoperator.io]
  resources: [approvalrequests]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [agentoperator.io]
  resources: [approvalrequests/status]
  verbs: [patch]
- apiGroups: [agentoperator.io]
  resources: [agentpools]
  verbs: [list, watch, patch]
- apiGroups: [agentoperator.io]
  resources: [agentpools/status]
  verbs: [patch]
# MCP servers: watched, their status (the tools listed, Ready) patched.
- apiGroups: [agentoperator.io]
  resources: [mcpservers]
  verbs: [list, watch, patch]
- apiGroups: [agentoperator.io]
  resources: [mcpservers/status]
  verbs: [patch]
# Step Jobs: created suspended, let run (patch), deleted, and read back when a creation
# meets one already made (adopted); Jobs and their pods listed and watched by label.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# A step result over 4 KiB is the last line of its pod's log (steps hold no store access).
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
{{- define "agent-operator.secretRules" -}}
# The AgentPools' model API keys, read when planning a goal, and the MCPServers' headers,
# read when listing their tools.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
  {{- with .Values.rbac.secretNames }}
  resourceNames:
    {{- toYaml (. | uniq) | nindent 4 }}
  {{- end }}
{{- end }}
