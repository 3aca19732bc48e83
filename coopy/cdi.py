"""CDI (Container Device Interface) specs for NVIDIA GPUs, read as discovery's source of truth.

``nvidia-ctk cdi generate`` writes ``/etc/cdi/nvidia.yaml`` (or ``/var/run/cdi``) listing
the device nodes, the driver's files and the environment a container needs.  When such
a spec exists and every path it names exists (a spec left over from an older driver
names files that are gone: stale), coopy uses it instead of its own discovery; hooks
are not run: coopy makes the SONAME links and the ld cache itself.

Specs are JSON or YAML.  No YAML library is a dependency: :func:`parse_yaml` reads the
block subset that CDI generators write (mappings, sequences, plain and quoted scalars,
flow lists of plain scalars) and refuses anything else (anchors, tags, nested flow
collections), which makes the spec "broken" and discovery is used.
"""

from __future__ import annotations

import json
import os
from typing import Any

from coopy.gpuhost import Gpu, GpuFile, GpuHost, driver_version, join

CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
KIND = "nvidia.com/gpu"


def _scalar(text: str) -> Any:
    if text == "{}":
        return {}
    if text.startswith("[") and text.endswith("]"):  # a flow list of plain scalars
        items = [i.strip() for i in text[1:-1].split(",")] if text[1:-1].strip() else []
        if any(not i or i[0] in "[{'\"&*!|>" for i in items):
            raise ValueError(f"unsupported YAML: {text}")
        return items
    if text[:1] in ("'", '"'):
        quote = text[0]
        if len(text) < 2 or text[-1] != quote:
            raise ValueError(f"unterminated string: {text}")
        body = text[1:-1]
        return body.replace("''", "'") if quote == "'" else json.loads(text)
    if text[:1] in ("[", "{", "&", "*", "!", "|", ">"):
        raise ValueError(f"unsupported YAML: {text}")
    return text


def parse_yaml(text: str) -> Any:
    """The block-style YAML subset of CDI specs; ValueError on anything else."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        content = raw.strip()
        if not content or content.startswith("#") or content == "---":
            continue
        if content == "...":
            break
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError("tabs in indentation")
        lines.append((len(raw) - len(raw.lstrip()), content))
    pos = 0

    def is_item(content: str) -> bool:
        return content == "-" or content.startswith("- ")

    def block(indent: int) -> Any:
        nonlocal pos
        if is_item(lines[pos][1]):
            seq = []
            while pos < len(lines) and lines[pos][0] == indent and is_item(lines[pos][1]):
                rest = lines[pos][1][1:].lstrip()
                if not rest:
                    pos += 1
                    seq.append(block(lines[pos][0]) if pos < len(lines)
                               and lines[pos][0] > indent else None)
                elif _key(rest) is not None:  # "- key: value": a mapping starts here
                    lines[pos] = (indent + len(lines[pos][1]) - len(rest), rest)
                    seq.append(block(lines[pos][0]))
                else:
                    seq.append(_scalar(rest))
                    pos += 1
            return seq
        mapping: dict[str, Any] = {}
        while pos < len(lines) and lines[pos][0] == indent and not is_item(lines[pos][1]):
            kv = _key(lines[pos][1])
            if kv is None:
                raise ValueError(f"expected key: value, got {lines[pos][1]!r}")
            key, value = kv
            pos += 1
            if value:
                mapping[key] = _scalar(value)
            elif pos < len(lines) and (lines[pos][0] > indent or (
                    lines[pos][0] == indent and is_item(lines[pos][1]))):
                mapping[key] = block(lines[pos][0])
            else:
                mapping[key] = None
        return mapping

    if not lines:
        return None
    out = block(lines[0][0])
    if pos != len(lines):
        raise ValueError(f"unexpected indentation at {lines[pos][1]!r}")
    return out


def _key(content: str) -> tuple[str, str] | None:
    if content[:1] in ("'", '"'):
        end = content.find(content[0], 1)
        if end < 0 or content[end + 1: end + 2] != ":":
            return None
        return content[1:end], content[end + 2:].strip()
    key, sep, value = content.partition(":")
    if not sep or (value and not value.startswith(" ")) or not key or " " in key.strip():
        return None
    return key.strip(), value.strip()


def spec_files(root: str) -> list[str]:
    """The CDI spec files under the root, in the order CDI gives them priority."""
    out = []
    for d in CDI_DIRS:
        try:
            names = sorted(os.listdir(join(root, d)))
        except OSError:
            continue
        out += [f"{d}/{n}" for n in names if n.endswith((".yaml", ".yml", ".json"))]
    return out


def load_spec(root: str, path: str) -> dict[str, Any]:
    """One spec file parsed; ValueError with the reason when it is broken."""
    try:
        with open(join(root, path), encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(exc.strerror) from None
    doc = json.loads(text) if path.endswith(".json") else parse_yaml(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise ValueError("no kind")
    return doc


def _edits(entry: Any) -> dict[str, Any]:
    edits = entry.get("containerEdits") if isinstance(entry, dict) else None
    return edits if isinstance(edits, dict) else {}


def _nodes(edits: dict[str, Any]) -> list[tuple[str, str]]:
    """(box path, host path) of each device node."""
    out = []
    for node in edits.get("deviceNodes") or []:
        if not isinstance(node, dict) or not isinstance(node.get("path"), str):
            raise ValueError("a deviceNode without a path")
        out.append((node["path"], node.get("hostPath") or node["path"]))
    return out


def host_from_spec(root: str, path: str, doc: dict[str, Any]) -> GpuHost:
    """Translate a spec into what discovery would have found; ValueError if stale/broken."""
    from coopy.ldcache import read_elf

    missing = []
    gpus: dict[str, Gpu] = {}
    uuids: dict[str, str] = {}
    for dev in doc.get("devices") or []:
        name = str(dev.get("name")) if isinstance(dev, dict) else ""
        nodes = _nodes(_edits(dev))
        gpu_nodes = [b for b, _ in nodes if b.startswith("/dev/nvidia") and b[11:].isdigit()]
        missing += [h for _, h in nodes if not os.path.exists(join(root, h))]
        if name.isdigit() and gpu_nodes:
            minor = int(gpu_nodes[0][11:])
            gpus[gpu_nodes[0]] = Gpu(int(name), minor, gpu_nodes[0])
        elif name.startswith(("GPU-", "MIG-")) and gpu_nodes:
            uuids[gpu_nodes[0]] = name
    edits = _edits(doc)
    control: list[str] = []
    for box, host in _nodes(edits):
        (control if os.path.exists(join(root, host)) else missing).append(box)
    libraries, binaries, firmware, sockets = [], [], [], []
    for mount in edits.get("mounts") or []:
        if not isinstance(mount, dict) or not isinstance(mount.get("hostPath"), str):
            raise ValueError("a mount without a hostPath")
        host, box = mount["hostPath"], str(mount.get("containerPath") or mount["hostPath"])
        source = join(root, host)
        if not os.path.exists(source):
            missing.append(host)
            continue
        base = os.path.basename(box)
        why = f"CDI spec {path}"
        if ".so" in base:
            elf = read_elf(source)
            libraries.append(GpuFile(source, base, why, elf.soname if elf else None))
        elif "/bin/" in box or "/sbin/" in box:
            binaries.append(GpuFile(source, base, why))
        elif box.startswith("/lib/firmware/"):
            firmware.append(box)
        elif box.startswith(("/run/", "/var/run/")):
            sockets.append(box)
    if missing:
        raise ValueError(f"stale: {', '.join(missing[:3])} do{'es' if len(missing) == 1 else ''}"
                         " not exist (a spec of an older driver? `nvidia-ctk cdi generate` "
                         "makes a new one)")
    env = tuple(tuple(e.split("=", 1)) for e in edits.get("env") or [] if "=" in str(e))
    ordered = sorted(gpus.values(), key=lambda g: g.index)
    lib_version = next((f.name.split(".so.", 1)[1] for f in libraries
                        if f.name.startswith("libcuda.so.")), None)
    return GpuHost(
        root, f"cdi:{path}", driver_version(root) or lib_version, lib_version,
        tuple(g._replace(uuid=uuids.get(g.node)) for g in ordered), tuple(control),
        tuple(libraries), tuple(binaries), tuple(firmware), tuple(sockets),
        tuple((k, v) for k, v in env),
    )


def load_cdi(root: str) -> tuple[GpuHost | None, tuple[str, ...]]:
    """The GPU host described by the first usable NVIDIA CDI spec, and the problems of
    the specs that could not be used (broken or stale), each naming its file."""
    problems: list[str] = []
    for path in spec_files(root):
        try:
            doc = load_spec(root, path)
            if doc.get("kind") != KIND:
                continue
            return host_from_spec(root, path, doc), tuple(problems)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            problems.append(f"CDI spec {path} not used: {exc}")
    return None, tuple(problems)
