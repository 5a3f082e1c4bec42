{{/* The chart's name, overridable with nameOverride. */}}
{{- define "dfastllm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name used for every object: fullnameOverride, else the release name when it
already contains the chart's name, else "<release>-<chart>".
*/}}
{{- define "dfastllm-operator.fullname" -}}
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

{{- define "dfastllm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dfastllm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dfastllm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "dfastllm-operator.labels" -}}
helm.sh/chart: {{ include "dfastllm-operator.chart" . }}
{{ include "dfastllm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dfastllm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dfastllm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dfastllm-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's rules on DiffusionModels and their children, for the ClusterRole (all
namespaces) or the Role (watchNamespace). They live in files/rbac/rules.yaml, which the
operator's tests keep rule for rule equal to config/rbac/role.yaml; `required` turns a
chart packaged without the file into an error instead of a role without rules.
*/}}
{{- define "dfastllm-operator.rules" -}}
{{- required "files/rbac/rules.yaml is missing from the chart" (.Files.Get "files/rbac/rules.yaml") | trim }}
{{- end }}

{{/* Leader election's rules, kept equal to config/rbac/leader_election_role.yaml's. */}}
{{- define "dfastllm-operator.leaderElectionRules" -}}
{{- required "files/rbac/leader-election-rules.yaml is missing from the chart" (.Files.Get "files/rbac/leader-election-rules.yaml") | trim }}
{{- end }}
