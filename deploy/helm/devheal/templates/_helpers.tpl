{{/*
Names. Every object is named from .Values.name, and its namespace is .Values.namespace.name, so
that the admission policy's service account, the controller's --lease-namespace and the Lease
name in the Role always agree with the objects they refer to.
*/}}
{{- define "devheal.namespace" -}}
{{- required "namespace.name is required" .Values.namespace.name -}}
{{- end -}}

{{- define "devheal.agent" -}}
{{- printf "%s-agent" (required "name is required" .Values.name) -}}
{{- end -}}

{{- define "devheal.controller" -}}
{{- printf "%s-controller" (required "name is required" .Values.name) -}}
{{- end -}}

{{/*
The labels of one component: the same two as deploy/base, and nothing Helm-specific, so that
the chart and the kustomize base render the same objects (scripts/check-helm.sh).
Call with the component's name: include "devheal.labels" "agent".
*/}}
{{- define "devheal.labels" -}}
app.kubernetes.io/name: devheal
app.kubernetes.io/component: {{ . }}
{{- end -}}

{{/*
An image reference: repository:tag, the tag defaulting to the chart's appVersion.
Call with (dict "image" .Values.agent.image "root" $).
*/}}
{{- define "devheal.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" (required "an image repository is required" .image.repository) (toString $tag) -}}
{{- end -}}
