{{/* ------------------------------------------------------------------------------------
  Names and labels
------------------------------------------------------------------------------------ */}}

{{- define "passage-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Short enough for StatefulSet pod names and their controller-revision-hash label. */}}
{{- define "passage-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "passage-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "passage-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "passage-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "passage-agent.labels" -}}
helm.sh/chart: {{ include "passage-agent.chart" . }}
{{ include "passage-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: passage
{{- end -}}

{{- define "passage-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "passage-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "passage-agent.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .Values.image.registry) .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------
  TOML: the services read TOML with unknown fields refused. Values hold the same keys as
  YAML; this writes them back as TOML. Keys come out sorted: plain values first, then
  [tables], then [[arrays of tables]]. A null value is left out (the service's default
  applies). Numbers must be whole (every Passage setting is an integer, boolean, string or
  a list of those).
  Call: include "passage-agent.toml" (dict "table" $map "path" "")
------------------------------------------------------------------------------------ */}}

{{- define "passage-agent.toml" -}}
{{- $path := .path -}}
{{- range $key, $value := .table -}}
{{- if not (or (kindIs "invalid" $value) (kindIs "map" $value) (include "passage-agent.toml.isTableArray" $value)) }}
{{ $key }} = {{ include "passage-agent.toml.value" (dict "value" $value "key" (printf "%s%s" $path $key)) }}
{{- end -}}
{{- end -}}
{{- range $key, $value := .table -}}
{{- if kindIs "map" $value }}

[{{ $path }}{{ $key }}]
{{- include "passage-agent.toml" (dict "table" $value "path" (printf "%s%s." $path $key)) -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := .table -}}
{{- if include "passage-agent.toml.isTableArray" $value -}}
{{- range $item := $value }}

[[{{ $path }}{{ $key }}]]
{{- include "passage-agent.toml" (dict "table" $item "path" (printf "%s%s." $path $key)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "passage-agent.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- if kindIs "map" (index . 0) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "passage-agent.toml.value" -}}
{{- $v := .value -}}
{{- if kindIs "string" $v -}}
{{- if regexMatch "[\\x00-\\x1f\\x7f]" $v -}}
{{- fail (printf "%s: control characters (tabs, newlines, ...) are not allowed in a setting" .key) -}}
{{- end -}}
"{{ $v | replace "\\" "\\\\" | replace "\"" "\\\"" }}"
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- if ne (float64 $v) (floor $v) -}}
{{- fail (printf "%s: %v is not a whole number" .key $v) -}}
{{- end -}}
{{- int64 $v -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "passage-agent.toml.value" (dict "value" $e "key" $.key) }}{{ end }}]
{{- else -}}
{{- fail (printf "%s: a %s cannot be written as a TOML setting" .key (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------
  Paths. The state volume is mounted at /var/lib/passage-agent and the agent keeps its
  state in state/ below it. Secrets are copied by the prepare container from
  /run/passage-src/<dir> to /run/passage/<dir> (memory, mode 0400, owned by the agent's user).
------------------------------------------------------------------------------------ */}}

{{- define "passage-agent.stateDir" -}}/var/lib/passage-agent/state{{- end -}}
{{- define "passage-agent.configFile" -}}/etc/passage-agent/agent.toml{{- end -}}

{{/* ------------------------------------------------------------------------------------
  Required values, with the message an operator needs to fix them.
------------------------------------------------------------------------------------ */}}

{{- define "passage-agent.validate" -}}
{{- $v := .Values -}}
{{- if not $v.config.dispatchers -}}
{{- fail "config.dispatchers is required: the dispatchers' agent URLs, e.g. [https://dispatcher.passage.example.com:8443] (the passage chart's agent Service)" -}}
{{- end -}}
{{- $_ := required "config.connector_group is required: the connector group (forest/domain) these agents serve, as in `passage agent token create --connector-group`" $v.config.connector_group -}}
{{- if not $v.insecurePlaintext -}}
{{- $_ := required "secrets.dispatcherCa.name is required (unless insecurePlaintext): the Secret with the services CA certificate that pins the dispatchers (passage pki init: services-ca.pem)" $v.secrets.dispatcherCa.name -}}
{{- range $v.config.dispatchers -}}
{{- if hasPrefix "http://" . -}}
{{- fail (printf "config.dispatchers: %s is plaintext; use https:// (insecurePlaintext is for development only)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq $v.config.directory.kind "ldap" -}}
{{- if gt (len (compact (list $v.config.directory.url $v.config.directory.urls $v.config.directory.dns_srv))) 1 -}}
{{- fail "config.directory: set url (one server), urls (several, tried in order) or dns_srv (found in DNS): one of the three" -}}
{{- end -}}
{{- if not (or $v.config.directory.url $v.config.directory.urls $v.config.directory.dns_srv) -}}
{{- fail "config.directory.url, config.directory.urls or config.directory.dns_srv is required for kind ldap: url: ldaps://dc1.corp.example.com, or urls: [ldaps://dc1.corp.example.com, ldaps://dc2.corp.example.com], or dns_srv: {domain: corp.example.com}" -}}
{{- end -}}
{{- if and $v.config.directory.insecure_skip_tls_verify (or $v.secrets.ldapCa.name $v.config.directory.pinned_certificates_sha256) -}}
{{- fail "config.directory.insecure_skip_tls_verify cannot go with secrets.ldapCa (the agent's ca_file) or pinned_certificates_sha256: verify the directory's certificate, or (testing only) skip verification" -}}
{{- end -}}
{{- $_ := required "config.directory.base_dn is required for kind ldap: where user searches start" $v.config.directory.base_dn -}}
{{- if and $v.config.directory.nested_groups (ne $v.config.directory.nested_groups "off") (not $v.config.directory.group_search) -}}
{{- fail (printf "config.directory.nested_groups %s needs config.directory.group_search: the groups' base_dn (and filter, member_attribute)" $v.config.directory.nested_groups) -}}
{{- end -}}
{{- if and $v.config.directory.bind_dn (not $v.secrets.ldapBindPassword.name) -}}
{{- fail "secrets.ldapBindPassword.name is required with config.directory.bind_dn: the Secret holding the service account's password (kubectl create secret generic passage-ldap-bind --from-literal=password=...)" -}}
{{- end -}}
{{- end -}}
{{- if eq $v.config.directory.kind "static" -}}
{{- $_ := required "secrets.staticUsers.name is required for directory kind static: the Secret holding the users file (TOML with Argon2id hashes from passage hash-password)" $v.secrets.staticUsers.name -}}
{{- end -}}
{{- if $v.metrics.podMonitor.enabled -}}
{{- if not $v.health.enabled -}}
{{- fail "metrics.podMonitor.enabled needs health.enabled: the agent serves GET /metrics on its health endpoint (health_listen), which health.enabled opens" -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.metricsFrom) -}}
{{- fail "networkPolicy.metricsFrom is required with metrics.podMonitor.enabled and networkPolicy.enabled: the peers that scrape the agents (e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}, podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}}]); agents otherwise accept no connection" -}}
{{- end -}}
{{- end -}}
{{- if eq $v.state.type "secret" -}}
{{- $_ := required "state.secret.name is required with state.type secret: the Secret holding each replica's pre-enrolled state (keys <ordinal>.agent-id, <ordinal>.agent-key.der, ...)" $v.state.secret.name -}}
{{- else if $v.enrolment.enabled -}}
{{- $_ := required "enrolment.tokenSecret.name is required: the Secret with each replica's one-time enrolment token (keys token-0, token-1, ...; passage agent token create). Set enrolment.enabled=false if the agents are enrolled another way" $v.enrolment.tokenSecret.name -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------
  The agent's configuration file.
------------------------------------------------------------------------------------ */}}

{{- define "passage-agent.config" -}}
{{- $v := .Values -}}
{{- $c := deepCopy $v.config -}}
{{- $_ := set $c "state_dir" (include "passage-agent.stateDir" .) -}}
{{- $_ := set $c "insecure_plaintext" $v.insecurePlaintext -}}
{{- if $v.health.enabled -}}
{{- $_ := set $c "health_listen" (printf "0.0.0.0:%d" (int $v.health.port)) -}}
{{- end -}}
{{- if not $v.insecurePlaintext -}}
{{- $_ := set $c "tls" (dict "ca_file" "/run/passage/dispatcher-ca/ca.crt") -}}
{{- end -}}
{{- $d := $c.directory -}}
{{- if and (eq $d.kind "ldap") $v.secrets.ldapBindPassword.name -}}
{{- $_ := set $d "bind_password_file" "/run/passage/ldap-bind-password/password" -}}
{{- end -}}
{{- if and (eq $d.kind "ldap") $v.secrets.ldapCa.name -}}
{{- $_ := set $d "ca_file" "/run/passage/ldap-ca/ca.crt" -}}
{{- end -}}
{{- if and (eq $d.kind "ldap") (not $d.url) -}}
{{- $_ := unset $d "url" -}}
{{- end -}}
{{- if eq $d.kind "static" -}}
{{- $_ := set $d "path" "/run/passage/static-users/users.toml" -}}
{{- end -}}
# passage-agent configuration, written by the passage-agent chart from config
# (README "Configuration reference", agent).
{{ include "passage-agent.toml" (dict "table" $c "path" "") }}
{{- end -}}

{{/* ------------------------------------------------------------------------------------
  Scripts (POSIX sh). Env: POD_NAME (the StatefulSet pod, "<name>-<ordinal>").
------------------------------------------------------------------------------------ */}}

{{- define "passage-agent.prepareScript" -}}
#!/bin/sh
# Copies every mounted Secret (/run/passage-src/<dir>/<file>) to /run/passage/<dir>/<file>,
# owned by this (the agent's) user with mode 0400: the agent refuses secret files that group
# or others may read, which is what the kubelet makes of Secret files under fsGroup.
# With state.type secret, also lays out this replica's pre-enrolled state (mode 0600).
set -eu
umask 077
# (The paths can be moved for the chart's tests.)
src=${PREPARE_SRC:-/run/passage-src}
input=${PREPARE_INPUT:-/run/passage-input}
run=${PREPARE_RUN:-/run/passage}
state=${STATE_DIR:-{{ include "passage-agent.stateDir" . }}}
for dir in "$src"/*; do
  [ -d "$dir" ] || continue
  name=${dir##*/}
  mkdir -p "$run/$name"
  for file in "$dir"/*; do
    [ -f "$file" ] || continue
    target="$run/$name/${file##*/}"
    cat "$file" > "$target"
    chmod 0400 "$target"
  done
done
if [ -d "$input/state" ]; then
  ordinal=${POD_NAME##*-}
  mkdir -p "$state"
  for name in agent-id agent-key.der sealing-key.bin agent-cert.pem tenant-ca.pem; do
    file="$input/state/$ordinal.$name"
    if [ -f "$file" ]; then
      cat "$file" > "$state/$name"
      chmod 0600 "$state/$name"
    fi
  done
  for name in agent-id agent-key.der agent-cert.pem tenant-ca.pem; do
    if [ ! -f "$state/$name" ]; then
      echo "prepare: the Secret named by state.secret.name has no key \"$ordinal.$name\" for $POD_NAME" >&2
      exit 1
    fi
  done
  echo "prepare: laid out the pre-enrolled state of $(cat "$state/agent-id")"
fi
echo "prepare: copied $(find "$run" -type f | wc -l) files"
{{- end -}}

{{- define "passage-agent.enrolScript" -}}
#!/bin/sh
# Enrols this replica once: `passage-agent register` spends a one-time token, so it runs only
# while the state holds no certificate. The token goes in the environment (not the command
# line, which `ps` shows).
set -eu
# (The paths can be moved for the chart's tests.)
state=${STATE_DIR:-{{ include "passage-agent.stateDir" . }}}
tokens=${ENROLMENT_DIR:-/run/passage-input/enrolment}
config=${AGENT_CONFIG:-{{ include "passage-agent.configFile" . }}}
if [ -s "$state/agent-cert.pem" ]; then
  echo "enrol: $POD_NAME is enrolled as $(cat "$state/agent-id" 2>/dev/null || echo '?'); nothing to do"
  exit 0
fi
ordinal=${POD_NAME##*-}
token_file="$tokens/token-$ordinal"
if [ ! -f "$token_file" ] && [ "$ordinal" = 0 ]; then
  token_file="$tokens/token"
fi
if [ ! -f "$token_file" ]; then
  echo "enrol: $POD_NAME is not enrolled and the Secret named by enrolment.tokenSecret.name has no key \"token-$ordinal\": create a token (passage agent token create --connector-group {{ .Values.config.connector_group }}) and add it to the Secret (docs/kubernetes.md)" >&2
  exit 1
fi
PASSAGE_ENROLMENT_TOKEN=$(tr -d ' \r\n' < "$token_file")
export PASSAGE_ENROLMENT_TOKEN
exec passage-agent register --config "$config"
{{- end -}}

{{/* A Secret volume: (dict "name" vol "secret" name "items" list). */}}
{{- define "passage-agent.secretVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
    items:
{{- range .items }}
      - key: {{ .key | quote }}
        path: {{ .path | quote }}
{{- end }}
{{- end -}}

{{- define "passage-agent.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: RUST_LOG
  value: {{ .Values.telemetry.rustLog | quote }}
- name: PASSAGE_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
{{- if .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.telemetry.otlpEndpoint | quote }}
{{- end }}
{{- end -}}

{{- define "passage-agent.topologySpread" -}}
{{- if .Values.topologySpreadConstraints -}}
{{- toYaml .Values.topologySpreadConstraints -}}
{{- else -}}
{{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
- maxSkew: 1
  topologyKey: {{ $key }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "passage-agent.selectorLabels" $ | nindent 6 }}
  matchLabelKeys:
    - controller-revision-hash
{{- end }}
{{- end -}}
{{- end -}}
