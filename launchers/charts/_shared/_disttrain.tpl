{{- /*
Shared by the three charts (distrib-tensorflow, eval-tensorflow, tensorboard): this one file,
launchers/charts/_shared/_disttrain.tpl, linked into each chart's templates/ (a relative
symlink: Helm follows it, and the wheel carries a real copy). It renders the objects that
launchers/k8s_objects.py builds, as tests/test_helm_charts.py checks differentially; read
that module for the reasons behind each choice.
*/ -}}

{{/* The job's name: values.name, or the release name without the suffix the launcher gives
the eval and TensorBoard releases (mnist, mnist-eval, mnist-tensorboard: one job, mnist).
Every object name starts with it. */}}
{{- define "disttrain.name" -}}
{{- $suffix := get (dict "eval-tensorflow" "-eval" "tensorboard" "-tensorboard") .Chart.Name -}}
{{- .Values.name | default (trimSuffix $suffix .Release.Name) | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The run dir, refused where no pod could reach it (launchers/k8s_checks.py, in short). */}}
{{- define "disttrain.runDir" -}}
{{- $runDir := required "runDir (or the 2017 sample's traindir) is required: /azure/<share>/... or az://..." (.Values.runDir | default .Values.traindir) -}}
{{- $share := include "disttrain.share" . -}}
{{- if hasPrefix "/" $runDir -}}
{{- if not (and $share (hasPrefix (printf "/azure/%s/" $share) $runDir)) -}}
{{- fail (printf "runDir %s: no pod can reach it; accepted: a path under the mounted share, /azure/%s/ (storage.azureFileShare), or an az:// URL" $runDir ($share | default "<share>")) -}}
{{- end -}}
{{- else if not (include "disttrain.secretName" .) -}}
{{- if not .Values.serviceAccount -}}
{{- fail (printf "runDir %s: the pods have no Azure credentials; accepted: storage.secret (disttrain secret create) or serviceAccount (workload identity)" $runDir) -}}
{{- else if not (or .Values.storage.accountName (regexMatch "^[a-z]+://[^/@]+@[^./]+\\.(dfs|blob)\\." $runDir)) -}}
{{- fail (printf "runDir %s names no storage account, and the pods have no Secret to take it from; accepted: storage.accountName, or abfs://<container>@<account>.dfs.core.windows.net/..." $runDir) -}}
{{- end -}}
{{- end -}}
{{- $runDir -}}
{{- end -}}

{{/* An Azure Files share: storage.azureFileShare, or the 2017 sample's storage.sharename. */}}
{{- define "disttrain.share" -}}
{{- .Values.storage.azureFileShare | default .Values.storage.sharename -}}
{{- end -}}

{{/* The storage Secret: an existing one by name, or the one made from the 2017 base64 keys. */}}
{{- define "disttrain.secretName" -}}
{{- if .Values.storage.secret -}}
{{- .Values.storage.secret -}}
{{- else if .Values.storage.keybase64 -}}
{{- include "disttrain.name" . }}-storage
{{- end -}}
{{- end -}}

{{- define "disttrain.labels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: disttrain
app.kubernetes.io/instance: {{ include "disttrain.name" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- if gt (len .) 2 }}
disttrain.io/role: {{ index . 2 }}
disttrain.io/index: {{ index . 3 | toString | quote }}
{{- end }}
{{- end -}}

{{/* A pod's labels: the object's, and with a service account the one AKS's workload
identity webhook looks for. Arguments: as disttrain.labels. */}}
{{- define "disttrain.podLabels" -}}
{{- include "disttrain.labels" . }}
{{- if (index . 0).Values.serviceAccount }}
azure.workload.identity/use: "true"
{{- end }}
{{- end -}}

{{- define "disttrain.metadata" -}}
{{- $root := index . 0 -}}
name: {{ index . 1 }}
namespace: {{ $root.Release.Namespace }}
labels:
  {{- include "disttrain.labels" (rest (rest .)) | nindent 2 }}
  app.kubernetes.io/managed-by: {{ $root.Release.Service }}
  helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end -}}

{{/* NAME-<role>-<i>.NAME.<namespace>.svc:<port>: the pod's hostname under the headless Service. */}}
{{- define "disttrain.address" -}}
{{- $root := index . 0 -}}
{{- $name := include "disttrain.name" $root -}}
{{- printf "%s-%s-%d.%s.%s.svc:%d" $name (index . 1) (int (index . 2)) $name $root.Release.Namespace (int $root.Values.cluster.port) -}}
{{- end -}}

{{- define "disttrain.roleAddresses" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $quoted := list -}}
{{- range $i := until (int (index . 2)) -}}
{{- $quoted = append $quoted (printf "%q" (include "disttrain.address" (list $root $role $i))) -}}
{{- end -}}
{{- join ", " $quoted -}}
{{- end -}}

{{/*
TF_CONFIG, spelled exactly as disttrain.cluster.tf_config_json (Python's json.dumps with
sorted keys and ", "/": " separators): the differential test compares them. The evaluator
gets its own task only; one task alone gets an empty cluster.
*/}}
{{- define "disttrain.tfConfig" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $workers := int $root.Values.cluster.workers -}}
{{- $ps := int $root.Values.cluster.ps -}}
{{- $parts := list -}}
{{- if eq $role "evaluator" -}}
{{- $parts = append $parts (printf "\"evaluator\": [%s]" (include "disttrain.roleAddresses" (list $root "evaluator" 1))) -}}
{{- else if or (gt $workers 0) (gt $ps 0) -}}
{{- $parts = append $parts (printf "\"chief\": [%s]" (include "disttrain.roleAddresses" (list $root "chief" 1))) -}}
{{- if gt $ps 0 -}}
{{- $parts = append $parts (printf "\"ps\": [%s]" (include "disttrain.roleAddresses" (list $root "ps" $ps))) -}}
{{- end -}}
{{- if gt $workers 0 -}}
{{- $parts = append $parts (printf "\"worker\": [%s]" (include "disttrain.roleAddresses" (list $root "worker" $workers))) -}}
{{- end -}}
{{- end -}}
{{- printf "{\"cluster\": {%s}, \"task\": {\"index\": %d, \"type\": %q}}" (join ", " $parts) (int (index . 2)) $role -}}
{{- end -}}

{{/* The resolved config the tasks read: values.config with the chart's own keys laid over it. */}}
{{- define "disttrain.configYaml" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $config "name" (include "disttrain.name" .) -}}
{{- $_ := set $config "run_dir" (include "disttrain.runDir" .) -}}
{{- $cluster := deepCopy (get $config "cluster" | default dict) -}}
{{- $_ := set $cluster "workers" (int .Values.cluster.workers) -}}
{{- $_ := set $cluster "ps" (int .Values.cluster.ps) -}}
{{- $_ := set $cluster "max_restarts" (int .Values.cluster.maxRestarts) -}}
{{- $_ := set $cluster "hung_task_seconds" (int .Values.cluster.hungTaskSeconds) -}}
{{- $_ := set $config "cluster" $cluster -}}
{{- toYaml $config -}}
{{- end -}}

{{- define "disttrain.configMap" -}}
{{- $root := index . 0 -}}
apiVersion: v1
kind: ConfigMap
metadata:
  {{- include "disttrain.metadata" (list $root (index . 1) $root "config") | nindent 2 }}
data:
  config.yaml: |
    {{- include "disttrain.configYaml" $root | nindent 4 }}
{{- end -}}

{{/*
A pod spec. Arguments (a dict): root, role (values section: chief|worker|ps|evaluator|
tensorboard), command (list), env (list of {name, value}), port (0: none), restartPolicy,
hostname ("" for none), configMap (the config's ConfigMap; "" for none), portName,
hungTaskSeconds (0: no liveness probe).
*/}}
{{- define "disttrain.podSpec" -}}
{{- $root := .root -}}
{{- $role := index $root.Values .role -}}
{{- $secret := include "disttrain.secretName" $root -}}
{{- $share := include "disttrain.share" $root -}}
restartPolicy: {{ .restartPolicy }}
terminationGracePeriodSeconds: {{ int $root.Values.terminationGraceSeconds }}
automountServiceAccountToken: {{ not (empty $root.Values.serviceAccount) }}
enableServiceLinks: false
securityContext:
  runAsNonRoot: true
  runAsUser: 1000
  runAsGroup: 1000
  fsGroup: 1000
  seccompProfile:
    type: RuntimeDefault
containers:
  - name: main
    image: {{ $role.image | quote }}
    command:
      {{- toYaml .command | nindent 6 }}
    env:
      {{- range .env }}
      - name: {{ .name }}
        value: {{ .value | quote }}
      {{- end }}
      - name: XDG_CACHE_HOME
        value: /mnt/cache
      {{- with $root.Values.storage.accountName }}
      {{- if $secret }}
      {{- fail "storage.accountName: set with a Secret, whose key it would pair with; leave it empty (the Secret names the account), it is for workload identity" }}
      {{- end }}
      - name: AZURE_STORAGE_ACCOUNT_NAME
        value: {{ . | quote }}
      {{- end }}
      {{- if $secret }}
      {{- range list "AZURE_STORAGE_CONNECTION_STRING" "AZURE_STORAGE_ACCOUNT_NAME" "AZURE_STORAGE_ACCOUNT_KEY" "AZURE_STORAGE_SAS_TOKEN" }}
      - name: {{ . }}
        valueFrom:
          secretKeyRef:
            name: {{ $secret }}
            key: {{ . }}
            optional: true
      {{- end }}
      {{- end }}
    resources:
      requests:
        cpu: {{ $role.cpu | quote }}
        memory: {{ $role.memory | quote }}
      limits:
        memory: {{ $role.memory | quote }}
        {{- if gt (int $role.gpus) 0 }}
        nvidia.com/gpu: {{ $role.gpus | toString | quote }}
        {{- end }}
    securityContext:
      allowPrivilegeEscalation: false
      capabilities:
        drop: ["ALL"]
      runAsNonRoot: true
      seccompProfile:
        type: RuntimeDefault
    volumeMounts:
      {{- if .configMap }}
      - name: config
        mountPath: /etc/disttrain
        readOnly: true
      {{- end }}
      - name: scratch
        mountPath: /mnt
      {{- if $share }}
      - name: azure-share
        mountPath: /azure/{{ $share }}
      {{- end }}
    {{- if .port }}
    ports:
      - name: {{ .portName }}
        containerPort: {{ .port }}
    {{- end }}
    {{- if .hungTaskSeconds }}
    livenessProbe:
      exec:
        command:
          - python3
          - -c
          - "import os, sys, time; sys.exit(time.time() - os.stat(sys.argv[1]).st_mtime > float(sys.argv[2]))"
          - /tmp/disttrain-heartbeat
          - {{ .hungTaskSeconds | quote }}
      initialDelaySeconds: {{ .hungTaskSeconds }}
      periodSeconds: 10
      timeoutSeconds: 10
      failureThreshold: 1
    {{- end }}
volumes:
  {{- if .configMap }}
  - name: config
    configMap:
      name: {{ .configMap }}
  {{- end }}
  {{- if $root.Values.storage.scratchHostPath }}
  - name: scratch
    hostPath:
      path: {{ $root.Values.storage.scratchHostPath }}
      type: DirectoryOrCreate
  {{- else }}
  - name: scratch
    emptyDir: {{- if $root.Values.storage.scratchSizeLimit }}
      sizeLimit: {{ $root.Values.storage.scratchSizeLimit | quote }}
    {{- else }} {}
    {{- end }}
  {{- end }}
  {{- if $root.Values.storage.azureFileClaim }}
  - name: azure-share
    persistentVolumeClaim:
      claimName: {{ $root.Values.storage.azureFileClaim }}
  {{- else if $share }}
  - name: azure-share
    csi:
      driver: file.csi.azure.com
      volumeAttributes:
        secretName: {{ $secret | quote }}
        shareName: {{ $share | quote }}
        mountOptions: "dir_mode=0770,file_mode=0660,uid=1000,gid=1000,mfsymlinks,cache=strict,nosharesock"
  {{- end }}
{{- if .hostname }}
hostname: {{ .hostname }}
subdomain: {{ include "disttrain.name" $root }}
{{- end }}
{{- with $root.Values.serviceAccount }}
serviceAccountName: {{ . }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with $role.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if or $role.tolerations (gt (int $role.gpus) 0) }}
tolerations:
  {{- with $role.tolerations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- if gt (int $role.gpus) 0 }}
  - key: nvidia.com/gpu
    operator: Exists
    effect: NoSchedule
  {{- end }}
{{- end }}
{{- end -}}

{{/* One Job per task (see launchers/k8s_objects.py): arguments root, role, index, configMap. */}}
{{- define "disttrain.taskJob" -}}
{{- $root := .root -}}
{{- $name := include "disttrain.name" $root -}}
{{- $host := printf "%s-%s-%d" $name .role (int .index) -}}
{{- $component := ternary "evaluator" "trainer" (eq .role "evaluator") -}}
{{- $env := list (dict "name" "TF_CONFIG" "value" (include "disttrain.tfConfig" (list $root .role .index))) (dict "name" "GRPC_FAIL_FAST" "value" "use_caller") (dict "name" "DISTTRAIN_GRACE_SECONDS" "value" (toString (int $root.Values.terminationGraceSeconds))) -}}
{{- $command := list "disttrain" "task" "--config" "/etc/disttrain/config.yaml" -}}
{{- $hungTaskSeconds := int $root.Values.cluster.hungTaskSeconds -}}
{{- if and (eq .role "evaluator") $root.Values.eval.once -}}
{{- $command = list "disttrain" "eval" "--config" "/etc/disttrain/config.yaml" "--once" -}}
{{- $hungTaskSeconds = 0 -}}
{{- end -}}
{{- if $hungTaskSeconds -}}
{{- $env = append $env (dict "name" "DISTTRAIN_HEARTBEAT_FILE" "value" "/tmp/disttrain-heartbeat") -}}
{{- end -}}
{{- $port := ternary 0 (int $root.Values.cluster.port) (eq .role "evaluator") -}}
apiVersion: batch/v1
kind: Job
metadata:
  {{- include "disttrain.metadata" (list $root (ternary $name $host (eq .role "chief")) $root $component .role .index) | nindent 2 }}
spec:
  backoffLimit: {{ int $root.Values.cluster.maxRestarts }}
  {{- /* FAILURE_POLICY in k8s_objects.py: exit 4 fails the Job; exit 5 and disruptions are not counted */}}
  podFailurePolicy:
    rules:
      - action: FailJob
        onExitCodes: {operator: In, values: [4]}
        onPodConditions: []
      - action: Ignore
        onExitCodes: {operator: In, values: [5]}
        onPodConditions: []
      - action: Ignore
        onPodConditions: [{type: DisruptionTarget, status: "True"}]
  {{- if gt (int $root.Values.activeDeadlineSeconds) 0 }}
  activeDeadlineSeconds: {{ int $root.Values.activeDeadlineSeconds }}
  {{- end }}
  {{- if and (eq .role "chief") (ge (int $root.Values.ttlSecondsAfterFinished) 0) }}
  ttlSecondsAfterFinished: {{ int $root.Values.ttlSecondsAfterFinished }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "disttrain.podLabels" (list $root $component .role .index) | nindent 8 }}
    spec:
      {{- include "disttrain.podSpec" (dict "root" $root "role" .role "command" $command "env" $env "port" $port "portName" "grpc" "restartPolicy" "Never" "hostname" $host "configMap" .configMap "hungTaskSeconds" $hungTaskSeconds) | nindent 6 }}
{{- end -}}

{{/* The 2017 sample's values shape: a Secret from storage.accountbase64/keybase64. */}}
{{- define "disttrain.legacySecret" -}}
{{- if and (not .Values.storage.secret) .Values.storage.keybase64 }}
apiVersion: v1
kind: Secret
metadata:
  {{- include "disttrain.metadata" (list . (include "disttrain.secretName" .) . "storage") | nindent 2 }}
type: Opaque
data:
  azurestorageaccountname: {{ .Values.storage.accountbase64 | quote }}
  azurestorageaccountkey: {{ .Values.storage.keybase64 | quote }}
  AZURE_STORAGE_ACCOUNT_NAME: {{ .Values.storage.accountbase64 | quote }}
  AZURE_STORAGE_ACCOUNT_KEY: {{ .Values.storage.keybase64 | quote }}
{{- end }}
{{- end -}}

{{- define "disttrain.legacyNotes" -}}
{{- if and (not .Values.storage.secret) .Values.storage.keybase64 }}
NOTE: this release made the Secret {{ include "disttrain.secretName" . }} from storage.keybase64
in your values file, so the key also sits in Helm's release record. Prefer an existing
Secret: `disttrain secret create --name azure-storage` (reads AZURE_STORAGE_ACCOUNT_NAME and
AZURE_STORAGE_ACCOUNT_KEY from your environment), then set storage.secret: azure-storage
and drop accountbase64/keybase64 from the values file.
{{- end }}
{{- if or .Values.evaldir .Values.logdir }}
NOTE: evaldir and logdir are read from the run dir's layout now: eval summaries go to
<runDir>/logs/eval and TensorBoard shows <runDir>/logs.
{{- end }}
{{- end -}}
