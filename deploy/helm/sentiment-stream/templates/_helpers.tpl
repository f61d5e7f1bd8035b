{{/* Names and labels. */}}
{{- define "sentiment-stream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sentiment-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sentiment-stream.labels" -}}
{{ include "sentiment-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The image; a component may add a tag suffix (e.g. -cuda for the GPU build). */}}
{{- define "sentiment-stream.image" -}}
{{- $img := .root.Values.image -}}
{{- printf "%s:%s%s" $img.repository ($img.tag | default .root.Chart.AppVersion) (.suffix | default "") -}}
{{- end -}}

{{- define "sentiment-stream.modelsClaim" -}}
{{- .Values.models.existingClaim | default (printf "%s-models" (include "sentiment-stream.fullname" .)) -}}
{{- end -}}

{{/*
The container's env, from values: settings the chart owns (Kafka, the model store), then `env` and
`secretEnv`, each the chart-wide map overlaid by the component's own. Secrets only as secretKeyRef.
Call with dict "root" $ "values" .Values.<component> "extra" (dict of more chart-owned settings).
*/}}
{{- define "sentiment-stream.env" -}}
{{- $v := .root.Values -}}
{{- $owned := dict
  "SENTIMENT_KAFKA__BOOTSTRAP_SERVERS" $v.kafka.bootstrapServers
  "SENTIMENT_KAFKA__REVIEWS_TOPIC" $v.kafka.reviewsTopic
  "SENTIMENT_KAFKA__DLQ_TOPIC" $v.kafka.dlqTopic
  "SENTIMENT_KAFKA__PARTITIONS" $v.kafka.partitions
  "SENTIMENT_WORKER__APP_ID" $v.worker.appId
  "SENTIMENT_MODELS_DIR" "/models"
  "HOME" "/tmp"
-}}
{{- $owned = merge (.extra | default dict) $owned -}}
{{- $plain := merge (deepCopy (.values.env | default dict)) (deepCopy ($v.env | default dict)) -}}
{{- $secret := merge (deepCopy (.values.secretEnv | default dict)) (deepCopy ($v.secretEnv | default dict)) -}}
{{- range $name, $_ := $plain }}
{{- if regexMatch "(?i)(_URL|PASSWORD|SECRET|TOKEN)$" $name }}
{{- fail (printf "env.%s looks like a secret: put it in a Secret and reference it under secretEnv (README \"Kubernetes\")" $name) }}
{{- end }}
{{- if hasKey $owned $name }}
{{- fail (printf "env.%s is set by the chart from other values (kafka.*, worker.appId, worker.metricsPort): set those instead" $name) }}
{{- end }}
{{- end }}
{{- range $name, $value := merge $plain $owned }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- range $name, $ref := $secret }}
{{- if $ref }}
{{- $secretName := $v.existingSecret }}
{{- $key := $ref }}
{{- if kindIs "map" $ref }}
{{- $secretName = $ref.name | default $v.existingSecret }}
{{- $key = required (printf "secretEnv.%s needs a key" $name) $ref.key }}
{{- end }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secretEnv.%s: set existingSecret or give {name, key}" $name) $secretName }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every component. */}}
{{- define "sentiment-stream.podCommon" -}}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
