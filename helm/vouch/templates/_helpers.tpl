{{/*
Names, labels and the paths the daemon finds its files at. The paths are fixed:
the chart writes them into the daemon's configuration itself, so the mounts and
the configuration can never disagree.
*/}}

{{- define "vouch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vouch.fullname" -}}
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

{{- define "vouch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vouch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vouch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vouch.labels" -}}
helm.sh/chart: {{ include "vouch.chart" . }}
{{ include "vouch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vouch
{{- end }}

{{- define "vouch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vouch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vouch.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret holding the API token: the user's, or the one the chart makes. */}}
{{- define "vouch.apiTokenSecret" -}}
{{- .Values.apiToken.existingSecret | default (printf "%s-api-token" (include "vouch.fullname" .)) }}
{{- end }}

{{- define "vouch.apiTokenKey" -}}
{{- if .Values.apiToken.existingSecret }}{{ .Values.apiToken.key }}{{ else }}token{{ end }}
{{- end }}

{{- define "vouch.policiesConfigMap" -}}
{{- .Values.policies.existingConfigMap | default (printf "%s-policies" (include "vouch.fullname" .)) }}
{{- end }}

{{- define "vouch.trustKeysConfigMap" -}}
{{- .Values.trustKeys.existingConfigMap | default (printf "%s-trust-keys" (include "vouch.fullname" .)) }}
{{- end }}

{{- define "vouch.overridesConfigMap" -}}
{{- .Values.breakGlass.existingConfigMap | default (printf "%s-overrides" (include "vouch.fullname" .)) }}
{{- end }}

{{- define "vouch.hasPolicies" -}}
{{- if or .Values.policies.existingConfigMap .Values.policies.files }}true{{ end }}
{{- end }}

{{- define "vouch.hasTrustKeys" -}}
{{- if or .Values.trustKeys.existingConfigMap .Values.trustKeys.files }}true{{ end }}
{{- end }}

{{/*
The daemon's configuration: `config` from the values, with what only the chart
can know written over it: where it listens, keeps state, finds its token and
signing key (daemon.listen, .state_dir, .token_file, attestations.signing_key),
which store it uses and whether it elects a leader (daemon.store,
daemon.leader_election), since the Deployment's strategy depends on those. With
the kubernetes store and no attestations.source, attestations are kept in the
cluster too (kind kubernetes), not on the pod's own state volume. Break-glass
files are read from the mounted overrides ConfigMap (break_glass.directory). With
loadtest.enabled, loadtest_runner points vouch's Kubernetes load runner at the
mounted Job templates.
*/}}
{{- define "vouch.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $daemon := deepCopy (get $config "daemon" | default dict) }}
{{- $_ := set $daemon "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) }}
{{- $_ = set $daemon "state_dir" "/var/lib/vouch" }}
{{- $_ = set $daemon "token_file" (printf "/etc/vouch/secrets/api-token/%s" (include "vouch.apiTokenKey" .)) }}
{{- $store := deepCopy (.Values.store.settings | default dict) }}
{{- if eq .Values.store.kind "kubernetes" }}
{{- /* Two releases in one namespace must not share state: the objects' prefix is the release's. */}}
{{- $store = mergeOverwrite (dict "prefix" (include "vouch.fullname" . | trunc 20 | trimSuffix "-")) $store }}
{{- end }}
{{- $_ = set $store "kind" .Values.store.kind }}
{{- $_ = set $daemon "store" $store }}
{{- $leader := dict "enabled" false }}
{{- if .Values.leaderElection.enabled }}
{{- $leader = mergeOverwrite (dict "lease_name" (include "vouch.leaseName" .)) (deepCopy (.Values.leaderElection.settings | default dict)) }}
{{- $_ = set $leader "enabled" true }}
{{- end }}
{{- $_ = set $daemon "leader_election" $leader }}
{{- $_ = set $config "daemon" $daemon }}
{{- $attestations := deepCopy (get $config "attestations" | default dict) }}
{{- if .Values.signingKey.existingSecret }}
{{- $_ = set $attestations "signing_key" (printf "/etc/vouch/secrets/signing-key/%s" .Values.signingKey.key) }}
{{- end }}
{{- if and (eq .Values.store.kind "kubernetes") (not (get $attestations "source")) }}
{{- /* The state folder is the pod's own: with the state in the cluster, keep attestations there too. */}}
{{- $_ = set $attestations "source" (dict "kind" "kubernetes") }}
{{- end }}
{{- if $attestations }}
{{- $_ = set $config "attestations" $attestations }}
{{- end }}
{{- if .Values.loadtest.enabled }}
{{- /* Load tests as Jobs: the chart's templates are mounted there; settings cannot move them. */}}
{{- $runner := deepCopy (.Values.loadtest.settings | default dict) }}
{{- $_ = set $runner "kind" "kubernetes" }}
{{- $_ = set $runner "namespace" (include "vouch.loadtestNamespace" .) }}
{{- $_ = set $runner "image" .Values.loadtest.image }}
{{- $_ = set $runner "workers" (int .Values.loadtest.workers) }}
{{- $_ = set $runner "resources" (deepCopy (.Values.loadtest.resources | default dict)) }}
{{- $_ = set $runner "templates_dir" "/etc/vouch/loadtest" }}
{{- $_ = set $config "loadtest_runner" $runner }}
{{- end }}
{{- /* The overrides ConfigMap is always mounted there (it may be empty or missing). */}}
{{- $breakGlass := deepCopy (get $config "break_glass" | default dict) }}
{{- $_ = set $breakGlass "directory" "/etc/vouch/overrides" }}
{{- $_ = set $config "break_glass" $breakGlass }}
{{- toYaml $config }}
{{- end }}

{{/*
Settings that cannot be checked by values.schema.json because they depend on
each other. Fails the render with a message saying what to change.
*/}}
{{- define "vouch.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without it every replica would act on its own" }}
{{- end }}
{{- if and .Values.persistence.enabled (gt (int .Values.replicas) 1) }}
{{- fail "persistence is one volume for one replica's sqlite store; with replicas > 1 use store.kind=kubernetes" }}
{{- end }}
{{- if and .Values.leaderElection.enabled (ne .Values.store.kind "kubernetes") }}
{{- fail "leaderElection.enabled needs store.kind=kubernetes: a new leader must see the promotions its predecessor stored" }}
{{- end }}
{{- end }}

{{/*
The namespaces of this cluster where the kubernetes platform acts, as a JSON list:
rbac.namespaces when set; otherwise each environment's namespace (as the platform
finds it: platform.environments.<name>.namespace, else platform.namespace, else the
environment's name), leaving out environments reached through a kubeconfig context
or file, whose credentials come from that kubeconfig and not from this ServiceAccount.
Empty when the platform is not kubernetes.
*/}}
{{- define "vouch.platformNamespaces" -}}
{{- $config := .Values.config | default dict }}
{{- $platform := get $config "platform" | default dict }}
{{- $namespaces := list }}
{{- if .Values.rbac.namespaces }}
{{- $namespaces = .Values.rbac.namespaces }}
{{- else if eq (get $platform "kind" | default "local") "kubernetes" }}
{{- $perEnvironment := get $platform "environments" | default dict }}
{{- range $environment, $_ := get $config "environments" | default dict }}
{{- $own := get $perEnvironment $environment | default dict }}
{{- $context := get $own "context" | default (get $platform "context") }}
{{- $kubeconfig := get $own "kubeconfig" | default (get $platform "kubeconfig") }}
{{- if or (get $own "in_cluster") (and (not $context) (not $kubeconfig)) }}
{{- $namespaces = append $namespaces (get $own "namespace" | default (get $platform "namespace") | default $environment) }}
{{- end }}
{{- end }}
{{- end }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/*
The namespaces of this cluster where the store and the Lease live, as the daemon finds them:
the setting, else the pod's namespace ($POD_NAMESPACE). Empty when unused here, or when the
store is reached through a kubeconfig context or file instead of this ServiceAccount.
*/}}
{{- define "vouch.storeNamespace" -}}
{{- $settings := .Values.store.settings | default dict }}
{{- if and (eq .Values.store.kind "kubernetes") (not (get $settings "context")) (not (get $settings "kubeconfig")) }}
{{- get $settings "namespace" | default .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
The namespace of this cluster where the kubernetes attestation source keeps its ConfigMaps, as the
daemon finds it: attestations.source.namespace of the rendered configuration, else the pod's. Empty
when the source is of another kind, or reached through a kubeconfig context or file.
*/}}
{{- define "vouch.attestationsNamespace" -}}
{{- $source := get (get (include "vouch.config" . | fromYaml) "attestations" | default dict) "source" | default dict }}
{{- if eq (get $source "kind" | default "") "kubernetes" }}
{{- if or (get $source "in_cluster") (and (not (get $source "context")) (not (get $source "kubeconfig"))) }}
{{- get $source "namespace" | default .Release.Namespace }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vouch.leaderNamespace" -}}
{{- if .Values.leaderElection.enabled }}
{{- get (.Values.leaderElection.settings | default dict) "namespace" | default .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "vouch.leaseName" -}}
{{- get (.Values.leaderElection.settings | default dict) "lease_name" | default (printf "%s-leader" (include "vouch.fullname" .)) }}
{{- end }}

{{/*
The namespace where load tests run as Jobs (loadtest.namespace, else the release's); empty when
loadtest.enabled is false.
*/}}
{{- define "vouch.loadtestNamespace" -}}
{{- if .Values.loadtest.enabled }}
{{- .Values.loadtest.namespace | default .Release.Namespace }}
{{- end }}
{{- end }}
