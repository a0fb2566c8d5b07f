{{/* ------------------------------------------------------------------------------------
  Names and labels
------------------------------------------------------------------------------------ */}}

{{- define "passage.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-passage, or the release name alone when it already says passage. Short
     enough for "-dispatcher-headless" to fit in 63 characters. */}}
{{- define "passage.fullname" -}}
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

{{- define "passage.gateway.fullname" -}}{{ include "passage.fullname" . }}-gateway{{- end -}}
{{- define "passage.dispatcher.fullname" -}}{{ include "passage.fullname" . }}-dispatcher{{- end -}}

{{- define "passage.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "passage.labels" -}}
helm.sh/chart: {{ include "passage.chart" . }}
app.kubernetes.io/name: {{ include "passage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: passage
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "passage.selectorLabels" -}}
app.kubernetes.io/name: {{ include "passage.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "passage.componentLabels" -}}
{{ include "passage.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The labels of a component's metrics Service, and (all but the version and chart) what its
     ServiceMonitor selects: (dict "root" $ "component" "gateway"). */}}
{{- define "passage.metricsSelectorLabels" -}}
{{ include "passage.selectorLabels" . }}
passage.dev/metrics: "true"
{{- end -}}

{{- define "passage.metricsServiceLabels" -}}
{{ include "passage.componentLabels" . }}
passage.dev/metrics: "true"
{{- end -}}

{{- define "passage.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "passage.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* <registry>/<repository>:<tag> of image "gateway", "dispatcher" or "cli". */}}
{{- define "passage.image" -}}
{{- $image := index .root.Values.image .which -}}
{{- $tag := $image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) $image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "passage.namespace" -}}{{ .Release.Namespace }}{{- end -}}

{{/* ------------------------------------------------------------------------------------
  TOML: the services read TOML with unknown fields refused. Values hold the same keys as
  YAML; this writes them back as TOML. Keys come out sorted: plain values first, then
  [tables], then [[arrays of tables]]. A null value is left out (the service's default
  applies). Numbers must be whole (every Passage setting is an integer, boolean, string or
  a list of those).
  Call: include "passage.toml" (dict "table" $map "path" "")
------------------------------------------------------------------------------------ */}}

{{- define "passage.toml" -}}
{{- $path := .path -}}
{{- range $key, $value := .table -}}
{{- if not (or (kindIs "invalid" $value) (kindIs "map" $value) (include "passage.toml.isTableArray" $value)) }}
{{ $key }} = {{ include "passage.toml.value" (dict "value" $value "key" (printf "%s%s" $path $key)) }}
{{- end -}}
{{- end -}}
{{- range $key, $value := .table -}}
{{- if kindIs "map" $value }}

[{{ $path }}{{ $key }}]
{{- include "passage.toml" (dict "table" $value "path" (printf "%s%s." $path $key)) -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := .table -}}
{{- if include "passage.toml.isTableArray" $value -}}
{{- range $item := $value }}

[[{{ $path }}{{ $key }}]]
{{- include "passage.toml" (dict "table" $item "path" (printf "%s%s." $path $key)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "passage.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- if kindIs "map" (index . 0) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "passage.toml.value" -}}
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
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "passage.toml.value" (dict "value" $e "key" $.key) }}{{ end }}]
{{- else -}}
{{- fail (printf "%s: a %s cannot be written as a TOML setting" .key (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------
  Paths inside the pods. Secrets are mounted (read-only, as the kubelet makes them) under
  /run/passage-src/<dir> in the prepare container only; it copies them to the same <dir>
  under /run/passage (memory emptyDir, mode 0400, owned by the service user), which the
  service container mounts read-only.
------------------------------------------------------------------------------------ */}}

{{- define "passage.paths.run" -}}/run/passage{{- end -}}

{{/* ------------------------------------------------------------------------------------
  Required values, with the message an operator needs to fix them.
------------------------------------------------------------------------------------ */}}

{{- define "passage.validate" -}}
{{- $v := .Values -}}
{{- if and (not $v.store.url) (not $v.store.urlSecret.name) -}}
{{- fail "store: set store.url (a postgres:// DSN without the password, with store.passwordSecret for the password) or store.urlSecret.name (a Secret holding the whole DSN): gateway and dispatcher share one external PostgreSQL (docs/kubernetes.md, \"External PostgreSQL\")" -}}
{{- end -}}
{{- if and $v.store.url $v.store.urlSecret.name -}}
{{- fail "store: set store.url or store.urlSecret.name, not both" -}}
{{- end -}}
{{- if and $v.store.url (not (regexMatch "^postgres(ql)?://" $v.store.url)) -}}
{{- fail (printf "store.url must be a postgres:// or postgresql:// DSN (the chart runs several pods, which cannot share a SQLite file), not %q" (regexReplaceAll ":[^:@/]*@" $v.store.url ":***@")) -}}
{{- end -}}
{{- if regexMatch "^postgres(ql)?://[^/@]*:[^/@]*@" $v.store.url -}}
{{- fail "store.url holds a password: keep it out of values (they are stored in the release and in a ConfigMap); put the password in a Secret and name it in store.passwordSecret.name" -}}
{{- end -}}
{{- $_ := required "secrets.storeEncryptionKey.name is required: the Secret holding the store's key-encryption key (passage store key create --out store.key; kubectl create secret generic passage-store-key --from-file=store.key)" $v.secrets.storeEncryptionKey.name -}}
{{- $_ := required "gateway.config.issuer is required: the URL relying parties reach the gateway's HTTPS port at (the tokens' iss), e.g. https://login.example.com" $v.gateway.config.issuer -}}
{{- if not $v.insecurePlaintext -}}
{{- $_ := required "secrets.servicesCa.name is required (unless insecurePlaintext): the Secret holding the services CA certificate (passage pki init: services-ca.pem)" $v.secrets.servicesCa.name -}}
{{- $_ := required "secrets.dispatcherTls.name is required (unless insecurePlaintext): the kubernetes.io/tls Secret with the dispatcher's certificate (passage pki server --name dispatcher)" $v.secrets.dispatcherTls.name -}}
{{- $_ := required "secrets.gatewayTls.name is required (unless insecurePlaintext): the kubernetes.io/tls Secret with the gateway's server certificate (passage pki server --name gateway)" $v.secrets.gatewayTls.name -}}
{{- $_ := required "secrets.gatewayClientCert.name is required (unless insecurePlaintext): the kubernetes.io/tls Secret with the gateway's client certificate (passage gateway certificate issue)" $v.secrets.gatewayClientCert.name -}}
{{- $_ := required "secrets.signingKey.name is required (unless insecurePlaintext): the Secret with the token signing key every gateway replica shares (docs/kubernetes.md)" $v.secrets.signingKey.name -}}
{{- end -}}
{{- range $component := list "gateway" "dispatcher" -}}
{{- $a := (index $v $component).autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling: minReplicas (%d) is above maxReplicas (%d)" $component (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if $v.metrics.enabled -}}
{{- range $name, $port := dict "gateway.ports.grpc" $v.gateway.ports.grpc "gateway.ports.http" $v.gateway.ports.http "dispatcher.ports.agent" $v.dispatcher.ports.agent "dispatcher.ports.api" $v.dispatcher.ports.api -}}
{{- if eq (int $port) (int $v.metrics.port) -}}
{{- fail (printf "metrics.port %d is also %s: give the metrics listener a port of its own" (int $port) $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $dispatchers := ternary (int $v.dispatcher.autoscaling.maxReplicas) (int $v.dispatcher.replicaCount) $v.dispatcher.autoscaling.enabled -}}
{{- if and $v.dispatcher.agentService.enabled (gt $dispatchers 1) (not $v.dispatcher.agentService.perReplicaAddresses) -}}
{{- fail (printf "dispatcher.agentService.enabled with up to %d dispatcher replicas: an agent outside the cluster reaches only the one replica behind that Service's single address, so a gateway's call landing on another replica finds no agent. Either run one replica (dispatcher.replicaCount: 1, dispatcher.autoscaling.enabled: false), or give the agents a DNS name with one A record per replica (a LoadBalancer per dispatcher pod, or external-dns publishing the headless Service's pod addresses where the agents can route to them) and set dispatcher.agentService.perReplicaAddresses: true (docs/kubernetes.md)" $dispatchers) -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: the ServiceMonitors scrape the services' metrics port, which only metrics.enabled opens (metrics_listen)" -}}
{{- end -}}
{{- if $v.tests.signin.enabled -}}
{{- $_ := required "tests.signin.existingSecret is required when tests.signin.enabled: the Secret with the test user's username and password" $v.tests.signin.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------
  The configuration files.
------------------------------------------------------------------------------------ */}}

{{- define "passage.dispatcherUrl" -}}
{{- if .Values.gateway.dispatcherUrl -}}
{{- .Values.gateway.dispatcherUrl -}}
{{- else -}}
{{- /* The headless Service: one address per ready replica, so the gateways spread their calls
       over every replica and pass over one that goes away. */ -}}
{{- printf "%s://%s-headless.%s.svc:%d" (ternary "http" "https" .Values.insecurePlaintext) (include "passage.dispatcher.fullname" .) .Release.Namespace (int .Values.dispatcher.ports.api) -}}
{{- end -}}
{{- end -}}

{{- define "passage.listen" -}}
{{- if contains ":" .root.Values.listenHost -}}
{{- printf "[%s]:%d" .root.Values.listenHost (int .port) -}}
{{- else -}}
{{- printf "%s:%d" .root.Values.listenHost (int .port) -}}
{{- end -}}
{{- end -}}

{{- define "passage.gateway.config" -}}
{{- $v := .Values -}}
{{- $run := include "passage.paths.run" . -}}
{{- $c := deepCopy $v.gateway.config -}}
{{- $_ := set $c "grpc_listen" (include "passage.listen" (dict "root" . "port" $v.gateway.ports.grpc)) -}}
{{- $_ := set $c "http_listen" (include "passage.listen" (dict "root" . "port" $v.gateway.ports.http)) -}}
{{- $_ := set $c "dispatcher_url" (include "passage.dispatcherUrl" .) -}}
{{- if $v.metrics.enabled -}}
{{- $_ := set $c "metrics_listen" (include "passage.listen" (dict "root" . "port" $v.metrics.port)) -}}
{{- end -}}
{{- $_ := set $c "insecure_plaintext" $v.insecurePlaintext -}}
{{- if $v.secrets.signingKey.name -}}
{{- $_ := set $c "signing_key_file" (printf "%s/signing-key/signing-key.der" $run) -}}
{{- else -}}
{{- /* development: each replica makes its own key, in memory */ -}}
{{- $_ := set $c "signing_key_file" "/var/lib/passage/signing-key.der" -}}
{{- end -}}
{{- if $v.store.url -}}
{{- $_ := set $c "store_url" $v.store.url -}}
{{- end -}}
{{- if not $v.insecurePlaintext -}}
{{- $_ := set $c "tls" (dict "cert_file" (printf "%s/tls/tls.crt" $run) "key_file" (printf "%s/tls/tls.key" $run)) -}}
{{- $_ := set $c "dispatcher_tls" (dict "ca_file" (printf "%s/services-ca/ca.crt" $run) "cert_file" (printf "%s/dispatcher-client/tls.crt" $run) "key_file" (printf "%s/dispatcher-client/tls.key" $run)) -}}
{{- end -}}
{{- if or $v.gateway.policies $v.gateway.policiesConfigMap.name -}}
{{- $_ := set $c "policies_file" "/etc/passage/policies/policies.yaml" -}}
{{- end -}}
{{- if $v.gateway.useStoreEncryptionKey -}}
{{- $_ := set $c "store_encryption_key_file" (printf "%s/store-key/store.key" $run) -}}
{{- end -}}
{{- if $v.gateway.adminTokenSha256 -}}
{{- if not $v.secrets.adminTokens.name -}}
{{- $_ := set $c "admin_token_sha256" $v.gateway.adminTokenSha256 -}}
{{- end -}}
{{- end -}}
# passage-gateway configuration, written by the passage chart from gateway.config
# (README "Configuration reference"). The prepare init container puts it under {{ $run }},
# adding what comes from Secrets.
{{ include "passage.toml" (dict "table" $c "path" "") }}
{{- end -}}

{{- define "passage.dispatcher.config" -}}
{{- $v := .Values -}}
{{- $run := include "passage.paths.run" . -}}
{{- $c := deepCopy $v.dispatcher.config -}}
{{- $_ := set $c "agent_listen" (include "passage.listen" (dict "root" . "port" $v.dispatcher.ports.agent)) -}}
{{- $_ := set $c "api_listen" (include "passage.listen" (dict "root" . "port" $v.dispatcher.ports.api)) -}}
{{- if $v.metrics.enabled -}}
{{- $_ := set $c "metrics_listen" (include "passage.listen" (dict "root" . "port" $v.metrics.port)) -}}
{{- end -}}
{{- $_ := set $c "insecure_plaintext" $v.insecurePlaintext -}}
{{- if $v.store.url -}}
{{- $_ := set $c "store_url" $v.store.url -}}
{{- end -}}
{{- $_ := set $c "store_encryption_key_file" (printf "%s/store-key/store.key" $run) -}}
{{- if not $v.insecurePlaintext -}}
{{- $agentTls := dict "cert_file" (printf "%s/tls/tls.crt" $run) "key_file" (printf "%s/tls/tls.key" $run) -}}
{{- if $v.secrets.agentClientCa.name -}}
{{- $_ := set $agentTls "client_ca_file" (printf "%s/agent-client-ca/ca.crt" $run) -}}
{{- end -}}
{{- $_ := set $c "agent_tls" $agentTls -}}
{{- $_ := set $c "api_tls" (dict "cert_file" (printf "%s/tls/tls.crt" $run) "key_file" (printf "%s/tls/tls.key" $run) "client_ca_file" (printf "%s/services-ca/ca.crt" $run)) -}}
{{- end -}}
# passage-dispatcher configuration, written by the passage chart from dispatcher.config
# (README "Configuration reference"). dispatcher_id defaults to the host name: the pod name.
{{ include "passage.toml" (dict "table" $c "path" "") }}
{{- end -}}

{{/* ------------------------------------------------------------------------------------
  The prepare init container's script (POSIX sh; busybox is enough).
  Env: CONFIG_NAME (gateway.toml or dispatcher.toml); optional STORE_URL_FROM_SECRET.
------------------------------------------------------------------------------------ */}}

{{- define "passage.prepareScript" -}}
#!/bin/sh
# Copies every mounted Secret (/run/passage-src/<dir>/<file>) to /run/passage/<dir>/<file>,
# owned by this (the service's) user with mode 0400: Passage refuses key files that group or
# others may read, which is what the kubelet makes of Secret files under fsGroup. Then writes
# the configuration: values from Secrets first (top-level keys must precede any [table]),
# then the ConfigMap's file.
set -eu
umask 077
# (The paths can be moved for the chart's tests.)
src=${PREPARE_SRC:-/run/passage-src}
input=${PREPARE_INPUT:-/run/passage-input}
run=${PREPARE_RUN:-/run/passage}
template=${PREPARE_TEMPLATE:-/etc/passage/template}
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
out="$run/$CONFIG_NAME"
{
  if [ -n "${STORE_URL_FROM_SECRET:-}" ]; then
    case "$STORE_URL_FROM_SECRET" in
      *"'"*) echo "prepare: the store DSN in the Secret named by store.urlSecret holds a single quote; percent-encode it (%27)" >&2; exit 1 ;;
    esac
    if [ "$(printf '%s' "$STORE_URL_FROM_SECRET" | tr -d '\n\r' )" != "$STORE_URL_FROM_SECRET" ]; then
      echo "prepare: the store DSN in the Secret named by store.urlSecret holds a line break" >&2; exit 1
    fi
    printf "store_url = '%s'\n" "$STORE_URL_FROM_SECRET"
  fi
  if [ -f "$input/admin-tokens/hashes" ]; then
    hashes=""
    for hash in $(grep -v '^[[:space:]]*#' "$input/admin-tokens/hashes" | tr -d '\r'); do
      if ! printf '%s' "$hash" | grep -Eq '^[0-9a-fA-F]{64}$'; then
        echo "prepare: secrets.adminTokens: each line must be a SHA-256 in hex (passage admin token prints it), not \"$hash\"" >&2; exit 1
      fi
      hashes="$hashes${hashes:+, }\"$hash\""
    done
{{- range .Values.gateway.adminTokenSha256 }}
    hashes="$hashes${hashes:+, }\"{{ . }}\""
{{- end }}
    printf 'admin_token_sha256 = [%s]\n' "$hashes"
  fi
  cat "$template/$CONFIG_NAME"
} > "$out"
chmod 0400 "$out"
echo "prepare: wrote $out and copied $(find "$run" -type f | wc -l) files"
{{- end -}}

{{/* ------------------------------------------------------------------------------------
  Pod pieces shared by the gateway and the dispatcher.
------------------------------------------------------------------------------------ */}}

{{/* A Secret volume for the prepare container: (dict "name" vol "secret" name "items" list). */}}
{{- define "passage.secretVolume" -}}
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

{{- define "passage.prepareContainer" -}}
- name: prepare
  image: "{{ .root.Values.prepare.image.repository }}:{{ .root.Values.prepare.image.tag }}"
  imagePullPolicy: {{ .root.Values.prepare.image.pullPolicy }}
  command: ["/bin/sh", "/etc/passage/template/prepare.sh"]
  env:
    - name: CONFIG_NAME
      value: {{ .configName }}
{{- if and .storeUrlFromSecret .root.Values.store.urlSecret.name }}
    - name: STORE_URL_FROM_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ .root.Values.store.urlSecret.name }}
          key: {{ .root.Values.store.urlSecret.key }}
{{- end }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  resources:
    {{- toYaml .root.Values.prepare.resources | nindent 4 }}
  volumeMounts:
    - name: template
      mountPath: /etc/passage/template
      readOnly: true
    - name: run
      mountPath: /run/passage
{{- range .secretMounts }}
    - name: {{ . }}
      mountPath: /run/passage-src/{{ trimPrefix "src-" . }}
      readOnly: true
{{- end }}
{{- if .adminTokens }}
    - name: admin-tokens
      mountPath: /run/passage-input/admin-tokens
      readOnly: true
{{- end }}
{{- end -}}

{{- define "passage.env" -}}
- name: RUST_LOG
  value: {{ .Values.telemetry.rustLog | quote }}
- name: PASSAGE_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
{{- if .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.telemetry.otlpEndpoint | quote }}
{{- end }}
{{- if .Values.store.passwordSecret.name }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.passwordSecret.name }}
      key: {{ .Values.store.passwordSecret.key }}
{{- end }}
{{- if .Values.store.caSecret.name }}
- name: PGSSLROOTCERT
  value: /run/passage/store-ca/ca.crt
{{- end }}
{{- end -}}

{{/* Probes: (dict "root" $ "component" "gateway"|"dispatcher" "kind" "readiness"|"liveness").
     The gateway's readiness follows whether a dispatcher and the store answer (`/readyz`, and
     the gRPC health of the server as a whole); its liveness only whether the process answers
     (`/healthz`, the gRPC health service "liveness"), so a dispatcher outage never restarts it.
     The dispatcher's readiness (gRPC, the server as a whole) follows its store; its liveness
     asks the service "liveness", which stays serving, so a store outage never restarts it. */}}
{{- define "passage.probeAction" -}}
{{- $v := .root.Values -}}
{{- $mode := $v.probes.mode -}}
{{- if eq $mode "auto" -}}{{- $mode = ternary "grpc" "tls-auto" $v.insecurePlaintext -}}{{- end -}}
{{- $grpcPort := ternary $v.gateway.ports.grpc $v.dispatcher.ports.agent (eq .component "gateway") -}}
{{- $liveness := ne .kind "readiness" -}}
{{- if eq $mode "grpc" -}}
grpc:
  port: {{ $grpcPort }}
  {{- if $liveness }}
  service: liveness
  {{- end }}
{{- else if eq $mode "grpcTLS" -}}
grpc:
  port: {{ $grpcPort }}
  mode: TLS
  {{- if $liveness }}
  service: liveness
  {{- end }}
{{- else if and (eq $mode "tls-auto") (eq .component "gateway") -}}
httpGet:
  path: {{ ternary "/healthz" "/readyz" $liveness }}
  port: https
  scheme: HTTPS
{{- else -}}
tcpSocket:
  port: {{ $grpcPort }}
{{- end -}}
{{- end -}}

{{- define "passage.probes" -}}
{{- $alive := include "passage.probeAction" (dict "root" .root "component" .component "kind" "liveness") -}}
{{- $ready := include "passage.probeAction" (dict "root" .root "component" .component "kind" "readiness") -}}
{{- $p := .root.Values.probes -}}
startupProbe:
  {{- $alive | nindent 2 }}
  {{- toYaml $p.startup | nindent 2 }}
readinessProbe:
  {{- $ready | nindent 2 }}
  {{- toYaml $p.readiness | nindent 2 }}
livenessProbe:
  {{- $alive | nindent 2 }}
  {{- toYaml $p.liveness | nindent 2 }}
{{- end -}}

{{/* topologySpreadConstraints: the component's own, or zone + node spread. */}}
{{- define "passage.topologySpread" -}}
{{- $own := index .root.Values .component "topologySpreadConstraints" -}}
{{- if $own -}}
{{- toYaml $own -}}
{{- else -}}
{{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
- maxSkew: 1
  topologyKey: {{ $key }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "passage.selectorLabels" $ | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}
{{- end -}}
{{- end -}}
