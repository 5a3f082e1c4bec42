#!/usr/bin/env bash
# Checks the deployment files without a cluster or a Docker engine:
#   (a) Dockerfiles: every COPY source exists and is not dockerignored; each
#       ENTRYPOINT binary and `cargo build -p/--bin` names a real crate and binary;
#   (b) kustomize renders config/default, config/samples, config/prometheus, config/kserve;
#       RBAC has no wildcards and no access to secrets; the samples obey the decoding rules
#       (and, once the CRD is generated, use only fields its schema declares);
#   (c) `helm lint` and `helm template` of charts/dfastllm-operator, with the default values
#       and with --set watchNamespace=ml --set serviceMonitor.enabled=true;
#   (d) the generated CRD's three copies are byte-identical.
# Every check runs; the script exits non-zero at the end if any failed.
#
#   scripts/lint-manifests.sh           # helm is built by scripts/tools/helm.sh if needed
#   HELM=/usr/bin/helm scripts/lint-manifests.sh
set -uo pipefail
cd "$(dirname "$0")/.."

CRD_NAME=diffusionmodels.dfastllm.io.yaml
CRD_COPIES=(crds/$CRD_NAME config/crd/bases/$CRD_NAME charts/dfastllm-operator/crds/$CRD_NAME)
CHART=charts/dfastllm-operator
KUSTOMIZE_DIRS=(config/default config/samples config/prometheus config/kserve)

failures=()
fail() { failures+=("$1"); echo "FAIL: $1"; }
ok() { echo "ok:   $1"; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- (a) Dockerfiles
# Prints one line per problem; checks COPY sources against the repo and .dockerignore
# (exact top-level entries), and binaries against the crates' Cargo.toml.
check_dockerfiles() {
    python3 - "$@" <<'PY'
import glob, json, os, re, shlex, sys, tomllib

def logical_lines(path):
    """Dockerfile instructions with continuations joined and comments dropped."""
    out, cur = [], ""
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not cur and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out

def crate(dirname):
    """(package name, binary names) of the crate in dirname, or None."""
    path = os.path.join(dirname, "Cargo.toml")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    pkg = doc.get("package", {}).get("name")
    bins = [b["name"] for b in doc.get("bin", []) if "name" in b]
    if not bins and os.path.isfile(os.path.join(dirname, "src", "main.rs")):
        bins = [pkg]
    bins += [os.path.splitext(os.path.basename(p))[0]
             for p in glob.glob(os.path.join(dirname, "src", "bin", "*.rs"))]
    return pkg, bins

ignored = set()
if os.path.isfile(".dockerignore"):
    for line in open(".dockerignore", encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith("#") and not line.startswith("!"):
            ignored.add(line.strip("/"))

crates = {}
with open("Cargo.toml", "rb") as f:
    members = tomllib.load(f).get("workspace", {}).get("members", [])
for member in members:
    info = crate(member)
    if info and info[0]:
        crates[info[0]] = info[1]
all_bins = {b for bins in crates.values() for b in bins}

problems = 0
def problem(msg):
    global problems
    problems += 1
    print(msg)

for dockerfile in sys.argv[1:]:
    lines = logical_lines(dockerfile)
    entrypoints = []
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word in ("COPY", "ADD"):
            rest = rest.strip()
            if rest.startswith("["):
                args = json.loads(rest)
                flags = []
            else:
                args = shlex.split(rest)
                flags = [a for a in args if a.startswith("--")]
                args = [a for a in args if not a.startswith("--")]
            if any(f.startswith("--from=") for f in flags):
                continue
            for src in args[:-1]:
                if re.match(r"^[a-z]+://", src):
                    continue
                norm = os.path.normpath(src)
                if not glob.glob(norm):
                    problem(f"{dockerfile}: COPY source '{src}' does not exist in the repository")
                elif norm.split(os.sep)[0] in ignored or norm in ignored:
                    problem(f"{dockerfile}: COPY source '{src}' is excluded by .dockerignore")
        elif word == "ENTRYPOINT":
            rest = rest.strip()
            argv = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            if argv:
                entrypoints.append(os.path.basename(argv[0]))
        elif word == "RUN" and "cargo build" in rest:
            toks = shlex.split(rest.replace("&&", " && "))
            for flag, value in zip(toks, toks[1:]):
                if flag in ("-p", "--package") and value not in crates:
                    problem(f"{dockerfile}: cargo builds package '{value}', not a workspace crate ({', '.join(sorted(crates))})")
                if flag == "--bin" and value not in all_bins:
                    problem(f"{dockerfile}: cargo builds binary '{value}', which no crate declares")
    if not entrypoints:
        problem(f"{dockerfile}: no ENTRYPOINT")
    # A Dockerfile inside a crate's folder must start one of that crate's binaries.
    own = crate(os.path.dirname(dockerfile) or ".")
    for binary in entrypoints[-1:]:
        if own and own[0]:
            if binary not in own[1]:
                problem(f"{dockerfile}: ENTRYPOINT runs '{binary}' but crate {own[0]} builds {own[1]}")
        elif binary not in all_bins:
            problem(f"{dockerfile}: ENTRYPOINT runs '{binary}', which no crate builds")
sys.exit(1 if problems else 0)
PY
}

mapfile -t dockerfiles < <(git ls-files --cached --others --exclude-standard -- '*Dockerfile*' | grep -v '^target/')
if [[ ${#dockerfiles[@]} -eq 0 ]]; then
    fail "no Dockerfile found"
elif out=$(check_dockerfiles "${dockerfiles[@]}" 2>&1); then
    ok "Dockerfiles: COPY sources exist, binaries match the crates (${dockerfiles[*]})"
else
    while IFS= read -r line; do fail "$line"; done <<<"$out"
fi

# ---------------------------------------------------------------- (b) kustomize
if command -v kubectl >/dev/null; then
    KUSTOMIZE=(kubectl kustomize)
elif command -v kustomize >/dev/null; then
    KUSTOMIZE=(kustomize build)
else
    KUSTOMIZE=()
    fail "neither kubectl nor kustomize is on PATH (install kubectl, or put kustomize v5 on PATH)"
fi

if [[ ! -f config/crd/bases/$CRD_NAME ]]; then
    fail "config/crd/bases/$CRD_NAME is missing: generate the CRD with \`dfastllm-operator crd\` (it writes all three copies)"
fi

if [[ ${#KUSTOMIZE[@]} -gt 0 ]]; then
    for dir in "${KUSTOMIZE_DIRS[@]}"; do
        out=$WORK/$(basename "$dir").yaml
        if "${KUSTOMIZE[@]}" "$dir" >"$out" 2>"$WORK/err"; then
            ok "kustomize renders $dir ($(grep -c '^kind:' "$out") objects)"
        else
            fail "kustomize cannot render $dir: $(tail -n 3 "$WORK/err" | tr '\n' ' ' | cut -c1-300)"
        fi
    done
fi

# RBAC and samples, checked on the YAML itself (PyYAML, else skipped with a note).
check_yaml() {
    python3 - "$@" <<'PY'
import sys
try:
    import yaml
except ImportError:
    print("SKIP: PyYAML is not installed; RBAC and sample checks skipped")
    sys.exit(0)

mode, files = sys.argv[1], sys.argv[2:]
docs = []
for path in files:
    with open(path, encoding="utf-8") as f:
        docs += [(path, d) for d in yaml.safe_load_all(f) if d]
problems = []

def rbac():
    for path, d in docs:
        if d.get("kind") not in ("ClusterRole", "Role"):
            continue
        name = f"{path}: {d['kind']} {d['metadata']['name']}"
        for rule in d.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in (rule.get(field) or []):
                    problems.append(f"{name}: wildcard in {field}")
            if any(r.split("/")[0] == "secrets" for r in rule.get("resources") or []):
                problems.append(f"{name}: grants access to secrets")

def schema_problems(value, schema, where, name):
    """Fields in value that the CRD's structural schema does not declare."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props and k in props:
                schema_problems(v, props[k], f"{where}.{k}", name)
            elif isinstance(extra, dict):
                schema_problems(v, extra, f"{where}.{k}", name)
            elif props is not None or extra is False:
                problems.append(f"{name}: {where.lstrip('.')}.{k} is not a field of the CRD schema".replace(": .", ": "))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            schema_problems(v, schema["items"], f"{where}[{i}]", name)

def samples(crd_path):
    schema = None
    if crd_path:
        with open(crd_path, encoding="utf-8") as f:
            crd = yaml.safe_load(f)
        for v in crd["spec"]["versions"]:
            if v["name"] == "v1alpha1":
                schema = v["schema"]["openAPIV3Schema"]
    for path, d in docs:
        if d.get("kind") != "DiffusionModel":
            continue
        name = f"{path}: DiffusionModel {d['metadata']['name']}"
        if d.get("apiVersion") != "dfastllm.io/v1alpha1":
            problems.append(f"{name}: apiVersion is {d.get('apiVersion')}")
        spec = d.get("spec") or {}
        dec = spec.get("decoding") or {}
        gen, block, steps = dec.get("genLength"), dec.get("blockLength"), dec.get("steps")
        if gen and block:
            if gen % block:
                problems.append(f"{name}: blockLength {block} does not divide genLength {gen}")
            elif steps and steps % (gen // block):
                problems.append(f"{name}: steps {steps} is not a multiple of genLength/blockLength = {gen // block}")
        for key in ("threshold",):
            v = (dec.get("apd") or {}).get(key)
            if v is not None and not isinstance(v, str):
                problems.append(f"{name}: decoding.apd.{key} must be a string such as \"0.9\"")
        if schema:
            # apiVersion, kind and metadata are implicit in every CRD schema.
            body = {k: v for k, v in d.items() if k not in ("apiVersion", "kind", "metadata")}
            schema_problems(body, schema, "", name)

if mode == "rbac":
    rbac()
else:
    samples(mode if mode != "-" else None)
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
PY
}

rbac_files=(config/rbac/*.yaml)
if out=$(check_yaml rbac "${rbac_files[@]}" 2>&1); then
    ok "config/rbac: no wildcards, no secrets${out:+ ($out)}"
else
    while IFS= read -r line; do fail "config/rbac: $line"; done <<<"$out"
fi
crd_for_samples=-
[[ -f config/crd/bases/$CRD_NAME ]] && crd_for_samples=config/crd/bases/$CRD_NAME
if out=$(check_yaml "$crd_for_samples" config/samples/*.yaml 2>&1); then
    ok "config/samples: decoding rules hold$([[ $crd_for_samples != - ]] && echo ", fields match the CRD schema")${out:+ ($out)}"
else
    while IFS= read -r line; do fail "$line"; done <<<"$out"
fi

# ---------------------------------------------------------------- (c) helm
HELM=${HELM:-}
if [[ -z $HELM ]]; then
    if ! HELM=$(scripts/tools/helm.sh | tail -n 1) || [[ ! -x $HELM ]]; then
        fail "could not build helm with scripts/tools/helm.sh"
        HELM=
    fi
fi
if [[ -n $HELM ]]; then
    if "$HELM" lint --strict "$CHART" >"$WORK/lint" 2>&1; then
        ok "helm lint --strict $CHART"
    else
        fail "helm lint $CHART: $(grep -E '\[(ERROR|WARNING)\]|Error' "$WORK/lint" | head -n 5 | tr '\n' ' ')"
    fi
    value_labels=("default" "watchNamespace=ml,serviceMonitor")
    value_args=("" "--set watchNamespace=ml --set serviceMonitor.enabled=true")
    for i in "${!value_labels[@]}"; do
        label=${value_labels[$i]}
        out=$WORK/helm-$label.yaml
        # shellcheck disable=SC2086 # the value set is a list of words on purpose
        if "$HELM" template dfastllm-operator "$CHART" --namespace dfastllm-system \
            ${value_args[$i]} >"$out" 2>"$WORK/err"; then
            if rbac_out=$(check_yaml rbac "$out" 2>&1); then
                ok "helm template ($label values): $(grep -c '^kind:' "$out") objects, RBAC without wildcards or secrets"
            else
                while IFS= read -r line; do fail "helm template ($label values): ${line#"$out: "}"; done <<<"$rbac_out"
            fi
        else
            fail "helm template ($label values): $(tail -n 3 "$WORK/err" | tr '\n' ' ' | cut -c1-300)"
        fi
    done
    # The namespaced value set must not create cluster-wide RBAC.
    ns_out=$WORK/helm-watchNamespace=ml,serviceMonitor.yaml
    if [[ -f $ns_out ]] && grep -qE '^kind: ClusterRole(Binding)?$' "$ns_out"; then
        fail "helm template with watchNamespace=ml still renders a ClusterRole/ClusterRoleBinding"
    fi
fi

# ---------------------------------------------------------------- (d) CRD copies
present=()
for f in "${CRD_COPIES[@]}"; do [[ -f $f ]] && present+=("$f"); done
if [[ ${#present[@]} -eq 0 ]]; then
    fail "the generated CRD is missing from all of ${CRD_COPIES[*]}: run \`dfastllm-operator crd\`"
elif [[ ${#present[@]} -lt ${#CRD_COPIES[@]} ]]; then
    fail "the generated CRD exists only as ${present[*]}: regenerate all copies with \`dfastllm-operator crd\`"
else
    identical=1
    for f in "${CRD_COPIES[@]:1}"; do
        if ! cmp -s "${CRD_COPIES[0]}" "$f"; then
            fail "$f differs from ${CRD_COPIES[0]}: regenerate with \`dfastllm-operator crd\`"
            identical=0
        fi
    done
    [[ $identical == 1 ]] && ok "CRD copies are byte-identical (${CRD_COPIES[*]})"
fi

echo
if [[ ${#failures[@]} -gt 0 ]]; then
    echo "lint-manifests: FAILED, ${#failures[@]} problem(s):" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "lint-manifests: all checks passed"
