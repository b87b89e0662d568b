"""Policy checks over rendered Kubernetes objects (plain dicts), independent of how they were
rendered: the Helm chart's output is checked here, and so is every hand-made bad variant in the
negative tests, so each rule is shown to fire.

* :func:`confidential_findings`: a pod that runs the enclave image runs under a Confidential
  Containers runtime class, with its init data, and takes nothing from the host that the
  measurement does not cover (no API token, no ConfigMap/Secret/hostPath volume, no host
  namespaces).
* :func:`hardening_findings`: every container non-root, read-only root filesystem, no privilege
  escalation, all capabilities dropped, CPU and memory limits.
* :func:`probe_findings`: liveness, readiness and startup probes on the paths and port the service
  really serves (passed in by the caller from the code's own constants and settings).
* :func:`grants` / :func:`isolation_findings`: what the NetworkPolicies allow, as a set of
  (direction, component, peer, protocol, port) grants, and whether every pod is covered both ways.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

CONFIDENTIAL_RUNTIME_CLASSES = frozenset({"kata-qemu-snp", "kata-qemu-tdx",
                                          "kata-qemu-nvidia-gpu-snp"})
INITDATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
COMPONENT = "app.kubernetes.io/component"
WORKLOADS = frozenset({"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
                       "CronJob", "ReplicationController"})
HOST_VOLUMES = ("hostPath", "configMap", "secret", "projected", "downwardAPI")


@dataclass(frozen=True)
class Finding:
    code: str
    where: str
    detail: str


@dataclass(frozen=True)
class PodTemplate:
    where: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]

    def containers(self) -> Iterator[Mapping[str, Any]]:
        for key in ("initContainers", "containers", "ephemeralContainers"):
            yield from self.spec.get(key) or ()


def pod_templates(objects: Iterable[Mapping[str, Any]]) -> Iterator[PodTemplate]:
    for obj in objects:
        kind = obj.get("kind")
        if kind not in WORKLOADS:
            continue
        where = f"{kind}/{obj.get('metadata', {}).get('name')}"
        if kind == "Pod":
            meta, spec = obj.get("metadata", {}), obj.get("spec", {})
        elif kind == "CronJob":
            tpl = obj["spec"]["jobTemplate"]["spec"]["template"]
            meta, spec = tpl.get("metadata", {}), tpl.get("spec", {})
        else:
            tpl = obj["spec"]["template"]
            meta, spec = tpl.get("metadata", {}), tpl.get("spec", {})
        yield PodTemplate(where, meta.get("labels") or {}, meta.get("annotations") or {}, spec)


def repository(image: str) -> str:
    """``registry/name`` of ``registry/name:tag@sha256:...`` (a port's colon is kept)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def confidential_findings(objects: Iterable[Mapping[str, Any]], enclave_repository: str
                          ) -> list[Finding]:
    out: list[Finding] = []
    for pod in pod_templates(objects):
        if not any(repository(c.get("image", "")) == enclave_repository for c in pod.containers()):
            continue
        spec = pod.spec
        rc = spec.get("runtimeClassName")
        if rc not in CONFIDENTIAL_RUNTIME_CLASSES:
            out.append(Finding("enclave.not_confidential", pod.where,
                               f"runtimeClassName {rc!r} is not a Confidential Containers class"))
        if not pod.annotations.get(INITDATA_ANNOTATION):
            out.append(Finding("enclave.no_initdata", pod.where, "no init data annotation"))
        if spec.get("automountServiceAccountToken") is not False:
            out.append(Finding("enclave.host_input", pod.where, "a service account token"))
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                out.append(Finding("enclave.host_input", pod.where, key))
        for volume in spec.get("volumes") or ():
            for kind in HOST_VOLUMES:
                if kind in volume:
                    out.append(Finding("enclave.host_input", pod.where,
                                       f"volume {volume.get('name')} is a {kind}"))
        for c in pod.containers():
            for source in c.get("envFrom") or ():
                if "configMapRef" in source:
                    out.append(Finding("enclave.host_input", pod.where,
                                       f"{c.get('name')} takes env from a ConfigMap"))
    return out


def _effective(pod: PodTemplate, c: Mapping[str, Any], key: str) -> Any:
    own = (c.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.spec.get("securityContext") or {}).get(key)


def hardening_findings(objects: Iterable[Mapping[str, Any]]) -> list[Finding]:
    out: list[Finding] = []
    for pod in pod_templates(objects):
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.spec.get(key):
                out.append(Finding("pod.host_namespace", pod.where, key))
        for c in pod.containers():
            where = f"{pod.where}/{c.get('name')}"
            sc = c.get("securityContext") or {}
            if _effective(pod, c, "runAsNonRoot") is not True:
                out.append(Finding("container.root", where, "runAsNonRoot is not true"))
            if _effective(pod, c, "runAsUser") == 0:
                out.append(Finding("container.root", where, "runAsUser is 0"))
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(Finding("container.writable_root", where,
                                   "readOnlyRootFilesystem is not true"))
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(Finding("container.privileged", where,
                                   "allowPrivilegeEscalation is not false"))
            if sc.get("privileged"):
                out.append(Finding("container.privileged", where, "privileged"))
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or ()) or caps.get("add"):
                out.append(Finding("container.capabilities", where,
                                   "capabilities: drop ALL and add none"))
            limits = (c.get("resources") or {}).get("limits") or {}
            requests = (c.get("resources") or {}).get("requests") or {}
            for resource in ("cpu", "memory"):
                if resource not in limits:
                    out.append(Finding("container.no_limits", where, f"no {resource} limit"))
                if resource not in requests and resource not in limits:
                    out.append(Finding("container.no_limits", where, f"no {resource} request"))
    return out


@dataclass(frozen=True)
class Served:
    """What a service's container really serves, from the code: its port, metrics port and
    health paths."""

    port: int
    metrics_port: int
    health_path: str
    ready_path: str


def _port(c: Mapping[str, Any], port: Any) -> Any:
    if isinstance(port, str):
        for p in c.get("ports") or ():
            if p.get("name") == port:
                return p.get("containerPort")
    return port


def probe_findings(objects: Iterable[Mapping[str, Any]], served: Mapping[str, Served]
                   ) -> list[Finding]:
    """For each pod whose component is in ``served``, its container of that name."""
    out: list[Finding] = []
    seen: set[str] = set()
    for pod in pod_templates(objects):
        component = pod.labels.get(COMPONENT)
        if component not in served:
            continue
        want = served[component]
        containers = [c for c in pod.spec.get("containers") or () if c.get("name") == component]
        if len(containers) != 1:
            out.append(Finding("probe.no_container", pod.where, f"no container {component}"))
            continue
        seen.add(component)
        c = containers[0]
        where = f"{pod.where}/{component}"
        for probe, path in (("livenessProbe", want.health_path),
                            ("readinessProbe", want.ready_path),
                            ("startupProbe", want.health_path)):
            spec = c.get(probe)
            if spec is None:
                if probe != "startupProbe":
                    out.append(Finding("probe.missing", where, probe))
                continue
            get = spec.get("httpGet")
            if not isinstance(get, Mapping):
                out.append(Finding("probe.not_http", where, f"{probe} is not an HTTP GET"))
                continue
            if get.get("path") != path:
                out.append(Finding("probe.wrong_path", where,
                                   f"{probe} path {get.get('path')!r}, the service serves {path}"))
            if _port(c, get.get("port")) != want.port:
                out.append(Finding("probe.wrong_port", where,
                                   f"{probe} port {get.get('port')!r}, the service listens on "
                                   f"{want.port}"))
        ports = {p.get("containerPort") for p in c.get("ports") or ()}
        for port in (want.port, want.metrics_port):
            if port not in ports:
                out.append(Finding("probe.port_undeclared", where, f"port {port} not declared"))
    for component in set(served) - seen:
        out.append(Finding("probe.no_container", component, "no pod runs it"))
    return out


# --- network policies -----------------------------------------------------------------------

def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return False
    if selector.get("matchExpressions"):
        raise ValueError("matchExpressions are not used by this chart; extend the checker")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def components(objects: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, str]]:
    """Each component's pod labels, from the workloads."""
    return {pod.labels[COMPONENT]: pod.labels for pod in pod_templates(objects)
            if COMPONENT in pod.labels}


def _labels(selector: Mapping[str, Any] | None) -> str:
    if selector is None:
        return ""
    if selector.get("matchExpressions"):
        raise ValueError("matchExpressions are not used by this chart; extend the checker")
    return ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items()))


def peer_names(peer: Mapping[str, Any], comps: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Readable names of a NetworkPolicyPeer: ``pod:COMPONENT`` for the release's own pods,
    ``cidr:CIDR``, ``ns:LABELS`` (``/pod:LABELS``) for other namespaces."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        excepted = ",".join(block.get("except") or ())
        return [f"cidr:{block['cidr']}" + (f" except {excepted}" if excepted else "")]
    if "namespaceSelector" in peer:
        name = f"ns:{_labels(peer['namespaceSelector']) or '*'}"
        if "podSelector" in peer:
            name += f"/pod:{_labels(peer['podSelector']) or '*'}"
        return [name]
    selector = peer.get("podSelector")
    matched = [f"pod:{c}" for c, labels in sorted(comps.items()) if _selects(selector, labels)]
    return matched or [f"pod-in-namespace:{_labels(selector) or '*'}"]


Grant = tuple[str, str, str, str, str]  # (ingress|egress, component, peer, protocol, port)


def grants(objects: Iterable[Mapping[str, Any]]) -> set[Grant]:
    objects = list(objects)
    comps = components(objects)
    out: set[Grant] = set()
    for policy in (o for o in objects if o.get("kind") == "NetworkPolicy"):
        spec = policy["spec"]
        selected = [c for c, labels in comps.items() if _selects(spec.get("podSelector"), labels)]
        types = spec.get("policyTypes") or ["Ingress"]
        for direction, key, peers_key in (("ingress", "ingress", "from"),
                                          ("egress", "egress", "to")):
            if direction.capitalize() not in types:
                continue
            for rule in spec.get(key) or ():
                peers = ["any"] if not rule.get(peers_key) else [
                    n for p in rule[peers_key] for n in peer_names(p, comps)]
                ports = [(p.get("protocol", "TCP"), str(p.get("port", "*")))
                         for p in rule.get("ports") or ()] or [("*", "*")]
                for comp in selected:
                    for peer in peers:
                        for proto, port in ports:
                            out.add((direction, comp, peer, proto, port))
    return out


def isolation_findings(objects: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Every pod of the release is selected by a policy for ingress and one for egress, so
    whatever no rule grants is denied."""
    objects = list(objects)
    comps = components(objects)
    covered: dict[str, set[str]] = {c: set() for c in comps}
    for policy in (o for o in objects if o.get("kind") == "NetworkPolicy"):
        spec = policy["spec"]
        for comp, labels in comps.items():
            if _selects(spec.get("podSelector"), labels):
                covered[comp] |= set(spec.get("policyTypes") or ["Ingress"])
    return [Finding("network.not_isolated", comp, f"no {d} policy selects it")
            for comp, types in sorted(covered.items()) for d in ("Ingress", "Egress")
            if d not in types]


def expected_grants(flows: Iterable[tuple[str, str, str, int]]) -> set[Grant]:
    """Flows ``(source, destination, protocol, port)`` as the grants that allow them: a
    destination that is a component (``pod:X``) grants ingress, a source that is one grants
    egress; a flow between two components needs both."""
    out: set[Grant] = set()
    for src, dst, proto, port in flows:
        if dst.startswith("pod:"):
            out.add(("ingress", dst[4:], src, proto, str(port)))
        if src.startswith("pod:"):
            out.add(("egress", src[4:], dst, proto, str(port)))
    return out
