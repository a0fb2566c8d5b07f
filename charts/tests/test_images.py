"""Checks the container images' Dockerfiles against the Helm charts that run them, statically
(CI has no container daemon: the images are not built there).

For each image the charts name (gateway, dispatcher, agent, the `passage` CLI of `helm test`):

* the Dockerfile is multi-stage: a named Rust build stage on the same Debian release as the
  runtime (glibc), a final stage on distroless `cc-debian12:nonroot`;
* its `cargo build` names the package and binary that the package's Cargo.toml declares, in
  release, with `--locked`, and every workspace member is in the build context it copies;
* the binary lands where the chart's `command` finds it (on the image's PATH, as ENTRYPOINT),
  and every absolute path a chart container runs (/bin/sh) exists in the image;
* USER is the uid:gid the chart's securityContext runs as, non-root, and the image declares
  nothing writable (readOnlyRootFilesystem);
* it EXPOSEs exactly the ports the chart's containers declare (with the default values);
* its OCI labels agree with Cargo.toml (source, description, license) and the chart
  (title = the image repository);
* the scripts the chart runs in the image (the agent's enrol.sh, the helm test command) work
  with exactly the busybox applets the image installs (when busybox is installed here);
* the root .dockerignore keeps target/ (and .git, .tools) out of the build context, and
  excludes nothing the Dockerfiles copy.

Run from the repository root:  python -m pytest charts/tests/test_images.py -q
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

from test_charts import CHARTS, REPO, VALID_SETS, FakePod, localise, rendered_set

# The image repositories the charts name (values.yaml), and the package directory whose
# Dockerfile builds each.
IMAGES = {
    "passage-gateway": "services/gateway",
    "passage-dispatcher": "services/dispatcher",
    "passage-agent": "agent",
    "passage": "cli",
}
RUNTIME_BASE = "gcr.io/distroless/cc-debian12:nonroot"
# Debian release of the runtime base -> the suite the Rust build stage must use (same glibc).
RUNTIME_SUITE = {"debian12": "bookworm"}
# The value sets that keep the charts' default ports.
DEFAULT_SETS = [("passage", "passage-defaults.yaml"), ("passage-agent", "agent-ldap.yaml")]
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY", re.I)


# --------------------------------------------------------------------------------------------
# A small Dockerfile reader: parser directives, stages, instructions with their --flags
# --------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        return json.loads(self.args) if self.args.startswith("[") else None

    def words(self) -> list[str]:
        return shlex.split(self.args)


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def assignments(self, keyword: str) -> dict[str, str]:
        """LABEL / ENV / ARG key=value pairs (ARG without a default: empty)."""
        pairs = {}
        for instruction in self.all(keyword):
            words = instruction.words()
            if keyword == "ENV" and len(words) >= 2 and "=" not in words[0]:
                pairs[words[0]] = " ".join(words[1:])  # the legacy `ENV key value`
                continue
            for word in words:
                key, _, value = word.partition("=")
                pairs[key] = value
        return pairs


@dataclass
class Dockerfile:
    path: Path
    directives: dict[str, str]
    header: list[str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        found = [s for s in self.stages if s.name == name]
        assert found, f"{self.rel}: no stage named {name!r} (stages: {[s.name for s in self.stages]})"
        return found[0]

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(REPO))


def split_flags(text: str) -> tuple[dict[str, str], str]:
    flags = {}
    while text.startswith("--"):
        word, _, text = text.partition(" ")
        key, _, value = word[2:].partition("=")
        flags[key] = value
        text = text.lstrip()
    return flags, text


def parse_dockerfile(path: Path) -> Dockerfile:
    lines = path.read_text().splitlines()
    directives, header = {}, []
    at_top = True
    for raw in lines:  # parser directives, then the header comment
        if at_top and (m := re.match(r"^#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$", raw)):
            directives[m.group(1).lower()] = m.group(2)
            continue
        at_top = False
        if raw.startswith("#") or not raw.strip():
            header.append(raw.lstrip("# ").rstrip())
            continue
        break
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not logical):
            continue  # comments (also inside a continuation) and blank lines
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, rest = logical.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        logical = ""
        flags, args = split_flags(rest) if keyword in {"FROM", "COPY", "ADD", "RUN"} else ({}, rest)
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, line=start))
            continue
        assert stages or keyword == "ARG", f"{path}:{start}: {keyword} before FROM"
        if stages:
            stages[-1].instructions.append(Instruction(keyword, flags, args, start))
    assert not logical, f"{path}: ends inside a continued line"
    return Dockerfile(path, directives, header, stages)


@functools.cache
def dockerfile(repository: str) -> Dockerfile:
    path = REPO / IMAGES[repository] / "Dockerfile"
    assert path.is_file(), f"no Dockerfile for image {repository}: expected {path.relative_to(REPO)}"
    return parse_dockerfile(path)


@functools.cache
def workspace() -> dict:
    return tomllib.loads((REPO / "Cargo.toml").read_text())


@functools.cache
def package(directory: str) -> dict:
    return tomllib.loads((REPO / directory / "Cargo.toml").read_text())


def bin_names(directory: str) -> set[str]:
    """The package's binaries: its [[bin]] names, else src/main.rs under the package's name."""
    manifest = package(directory)
    bins = {b["name"] for b in manifest.get("bin", [])}
    if not bins and manifest.get("package", {}).get("autobins", True) and (REPO / directory / "src" / "main.rs").is_file():
        bins = {manifest["package"]["name"]}
    return bins


def cargo_invocations(stage: Stage) -> list[list[str]]:
    """Every `cargo ...` command line in the stage's RUN instructions."""
    found = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;|\|\||\|", run.args):
            words = shlex.split(command)
            if words and words[0] == "cargo":
                found.append(words)
    return found


def option(words: list[str], *names: str) -> str | None:
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def build_stage(df: Dockerfile) -> Stage:
    """The stage the final stage copies the service's binary from."""
    sources = {c.flags["from"] for c in df.final.all("COPY") if "from" in c.flags}
    builds = [df.stage(s) for s in sources if any(w[:2] == ["cargo", "build"] for w in cargo_invocations(df.stage(s)))]
    assert len(builds) == 1, f"{df.rel}: the final stage must copy from exactly one stage that runs `cargo build`"
    return builds[0]


def binary_copy(df: Dockerfile) -> tuple[str, str]:
    """(path in the build stage, path in the image) of the service's binary."""
    build = build_stage(df)
    copies = [c.words() for c in df.final.all("COPY") if c.flags.get("from") == build.name]
    assert len(copies) == 1 and len(copies[0]) == 2, f"{df.rel}: one `COPY --from={build.name} <binary> <path>`"
    return copies[0][0], copies[0][1]


def image_path(df: Dockerfile) -> list[str]:
    env = df.final.assignments("ENV")
    assert "PATH" in env, f"{df.rel}: the final stage sets PATH (so that the chart's bare command names are checkable)"
    return env["PATH"].split(":")


def shell_files(df: Dockerfile) -> set[str]:
    """Files the final stage gets from a `shell` stage: the links and copies its RUN makes under
    /rootfs, with $applet expanded over BUSYBOX_APPLETS; empty without a shell stage."""
    copies = [c for c in df.final.all("COPY") if c.flags.get("from") == "shell"]
    if not copies:
        return set()
    assert [c.words() for c in copies] == [["/rootfs/", "/"]], f"{df.rel}: COPY --from=shell /rootfs/ /"
    applets = busybox_applets(df)
    files = set()
    for run in df.stage("shell").all("RUN"):
        for target in re.findall(r"(?:ln -s|cp)\s+\S+\s+\"?/rootfs(/[^\"\s;]+)\"?", run.args):
            if "$applet" in target:
                files |= {target.replace("$applet", a) for a in applets}
            else:
                files.add(target)
    return files


def busybox_applets(df: Dockerfile) -> list[str]:
    return df.stage("shell").assignments("ARG").get("BUSYBOX_APPLETS", "").split()


def provided_files(df: Dockerfile) -> set[str]:
    return {binary_copy(df)[1]} | shell_files(df)


def resolve(df: Dockerfile, command: str) -> str | None:
    """Where the image finds `command` (absolute, or looked up on its PATH)."""
    files = provided_files(df)
    if command.startswith("/"):
        return command if command in files else None
    for directory in image_path(df):
        candidate = str(PurePosixPath(directory) / command)
        if candidate in files:
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# What the charts run
# --------------------------------------------------------------------------------------------


def repository_of(image: str) -> str:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def pod_specs(manifests: list[dict]):
    for m in manifests:
        kind = m["kind"]
        if kind == "Pod":
            yield m, m["spec"]
        elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            yield m, m["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield m, m["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@dataclass
class ChartContainer:
    where: str
    container: dict
    pod_security: dict

    def security(self, key: str):
        return self.container.get("securityContext", {}).get(key, self.pod_security.get(key))


def chart_values(chart_name: str) -> dict:
    return yaml.safe_load((CHARTS / chart_name / "values.yaml").read_text())


def third_party_images() -> set[str]:
    return {repository_of(chart_values(c)["prepare"]["image"]["repository"]) for c in ("passage", "passage-agent")}


def containers(sets) -> dict[str, list[ChartContainer]]:
    """The chart containers of the given value sets, by image repository."""
    found: dict[str, list[ChartContainer]] = {}
    for chart_name, values_file in sets:
        for workload, spec in pod_specs(rendered_set(chart_name, values_file)):
            for c in spec.get("initContainers", []) + spec["containers"]:
                where = f"{chart_name} ({values_file}) {workload['kind']}/{workload['metadata']['name']} container {c['name']}"
                found.setdefault(repository_of(c["image"]), []).append(
                    ChartContainer(where, c, spec.get("securityContext", {})))
    return found


@functools.cache
def all_containers() -> dict[str, list[ChartContainer]]:
    return containers([(chart_name, values_file) for chart_name, values_file, _ in VALID_SETS])


@functools.cache
def default_containers() -> dict[str, list[ChartContainer]]:
    return containers(DEFAULT_SETS)


# --------------------------------------------------------------------------------------------
# The set of images
# --------------------------------------------------------------------------------------------


def test_every_image_the_charts_name_has_a_dockerfile():
    passage, agent = chart_values("passage")["image"], chart_values("passage-agent")["image"]
    named = {passage[which]["repository"] for which in ("gateway", "dispatcher", "cli")} | {agent["repository"]}
    assert named == set(IMAGES), f"values.yaml images {sorted(named)} != the Dockerfiles' {sorted(IMAGES)}"
    run = set(all_containers()) - third_party_images()
    assert run == set(IMAGES), (
        f"the charts run images {sorted(run)}; Dockerfiles exist for {sorted(IMAGES)}")
    for repository in IMAGES:
        assert (REPO / IMAGES[repository] / "Dockerfile").is_file()


# --------------------------------------------------------------------------------------------
# Each Dockerfile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repository", IMAGES)
def test_stages(repository):
    df = dockerfile(repository)
    assert df.directives.get("syntax", "").startswith("docker/dockerfile:1"), (
        f"{df.rel}: first line `# syntax=docker/dockerfile:1` (RUN --mount needs it)")
    assert len(df.stages) >= 2, f"{df.rel}: multi-stage (a build stage and a runtime stage)"
    names = [s.name for s in df.stages[:-1]]
    assert all(names) and len(set(names)) == len(names), f"{df.rel}: every stage but the last is named: {names}"
    # The runtime: distroless with glibc, as its non-root user; nothing run in it (no shell).
    final = df.final
    assert final.base.split("@", 1)[0] == RUNTIME_BASE, f"{df.rel}: the final stage is FROM {RUNTIME_BASE}, not {final.base}"
    assert not final.all("RUN"), f"{df.rel}: a RUN in the distroless stage (it has no shell)"
    assert not final.all("ADD"), f"{df.rel}: ADD in the runtime stage (COPY from a stage instead)"
    # The build: the official Rust image, on the runtime's Debian release (the binary links
    # the build's glibc), at least the workspace's rust-version.
    build = build_stage(df)
    assert build.name == "build", f"{df.rel}: the Rust stage is named `build` (FROM ... AS build)"
    m = re.fullmatch(r"(?:docker\.io/(?:library/)?)?rust:(\d+)\.(\d+)(?:\.\d+)?-(\w+)", build.base)
    assert m, f"{df.rel}: the build stage is FROM rust:<version>-<debian suite>, not {build.base}"
    suite = RUNTIME_SUITE[re.search(r"-(debian\d+)", RUNTIME_BASE).group(1)]
    assert m.group(3) == suite, f"{df.rel}: build on {m.group(3)}, run on {suite}: glibc would differ"
    wanted = tuple(int(x) for x in workspace()["workspace"]["package"]["rust-version"].split(".")[:2])
    assert (int(m.group(1)), int(m.group(2))) >= wanted, f"{df.rel}: Rust {m.group(1)}.{m.group(2)} < rust-version {wanted}"
    for stage in df.stages[:-1]:
        if stage.base.startswith("rust:"):
            assert stage.base == build.base, f"{df.rel}: stage {stage.name} on {stage.base}, build on {build.base}"


@pytest.mark.parametrize("repository", IMAGES)
def test_cargo_builds_the_package_and_binary_locked(repository):
    df = dockerfile(repository)
    manifest = package(IMAGES[repository])
    name, bins = manifest["package"]["name"], bin_names(IMAGES[repository])
    builds = [w for w in cargo_invocations(build_stage(df)) if w[:2] == ["cargo", "build"]]
    assert len(builds) == 1, f"{df.rel}: one `cargo build` in the build stage, found {builds}"
    words = builds[0]
    assert "--release" in words, f"{df.rel}: cargo build --release"
    assert option(words, "-p", "--package") == name, (
        f"{df.rel}: builds -p {option(words, '-p', '--package')}, but {IMAGES[repository]}/Cargo.toml is package {name}")
    binary = option(words, "--bin")
    assert binary in bins, f"{df.rel}: --bin {binary}, but {name} has bins {sorted(bins)}"
    assert binary == repository, f"{df.rel}: image {repository} builds binary {binary}"
    for stage in df.stages:
        for invocation in cargo_invocations(stage):
            if invocation[1] in {"build", "fetch", "install", "run"}:
                assert "--locked" in invocation or "--frozen" in invocation, (
                    f"{df.rel}: `{' '.join(invocation)}` without --locked (Cargo.lock must be used as is)")
    source, _ = binary_copy(df)
    install = [r.args for r in build_stage(df).all("RUN") if f"target/release/{binary}" in r.args]
    assert install and re.search(rf"target/release/{re.escape(binary)}\s+{re.escape(source)}(\s|$)", install[0]), (
        f"{df.rel}: the build stage puts target/release/{binary} at {source}, which the final stage copies")


def copied_sources(stage: Stage) -> list[str]:
    sources = []
    for c in stage.all("COPY") + stage.all("ADD"):
        if "from" in c.flags:
            continue
        words = c.exec_form() or c.words()
        sources += [w.rstrip("/") or "." for w in words[:-1]]
    return sources


def upstream(df: Dockerfile, stage: Stage) -> list[Stage]:
    """The stages whose files `stage` copies (COPY --from=<stage>), transitively."""
    found = []
    for c in stage.all("COPY"):
        name = c.flags.get("from")
        if name and name in {s.name for s in df.stages}:
            found += [df.stage(name), *upstream(df, df.stage(name))]
    return found


def covered(path: str, sources: list[str]) -> bool:
    return any(s == "." or path == s or path.startswith(s + "/") for s in sources)


@pytest.mark.parametrize("repository", IMAGES)
def test_the_whole_workspace_is_copied(repository):
    """Cargo loads every workspace member to build one package: the build stage copies every
    member's sources, and it or a stage it copies from the workspace's Cargo.toml and Cargo.lock
    (a stage that lays out the manifests must hold every member's)."""
    df = dockerfile(repository)
    members = workspace()["workspace"]["members"]
    build = build_stage(df)
    for path in members:
        assert covered(path, copied_sources(build)), (
            f"{df.rel}: the build stage copies {copied_sources(build)}, not the workspace member {path}")
    feeding = [build, *upstream(df, build)]
    for path in ["Cargo.toml", "Cargo.lock"]:
        assert any(covered(path, copied_sources(s)) for s in feeding), f"{df.rel}: {path} never reaches the build stage"
    for stage in feeding[1:]:
        if copied_sources(stage):
            for path in ["Cargo.toml", "Cargo.lock", *members]:
                assert covered(path, copied_sources(stage)), (
                    f"{df.rel}: stage {stage.name} lays out the workspace without {path}")


@pytest.mark.parametrize("repository", IMAGES)
def test_binary_is_where_the_chart_runs_it(repository):
    df = dockerfile(repository)
    _, installed = binary_copy(df)
    assert PurePosixPath(installed).name == repository
    entrypoint = df.final.all("ENTRYPOINT")
    assert len(entrypoint) == 1 and entrypoint[0].exec_form(), f"{df.rel}: one ENTRYPOINT, in exec form"
    assert entrypoint[0].exec_form()[0] == installed, f"{df.rel}: ENTRYPOINT {entrypoint[0].args} but the binary is at {installed}"
    assert str(PurePosixPath(installed).parent) in image_path(df), f"{df.rel}: {installed} is not on the image's PATH"
    used = all_containers()[repository]
    for c in used:
        command = c.container.get("command")
        assert command, f"{c.where}: no command (the image's ENTRYPOINT would run)"
        assert resolve(df, command[0]), (
            f"{c.where} runs {command[0]!r}; image {repository} ({df.rel}) has no such file "
            f"(it provides {sorted(provided_files(df))}, PATH {':'.join(image_path(df))})")
    main = [c for c in used if c.container["command"][0] != "/bin/sh"]
    for c in main:
        assert resolve(df, c.container["command"][0]) == installed, f"{c.where}: runs {c.container['command'][0]}"


@pytest.mark.parametrize("repository", IMAGES)
def test_shell_only_where_the_chart_runs_one(repository):
    df = dockerfile(repository)
    shells = [c.where for c in all_containers()[repository] if c.container["command"][0] == "/bin/sh"]
    has_shell = "/bin/sh" in shell_files(df)
    if shells:
        assert has_shell, f"{df.rel}: no /bin/sh, but the chart runs one: {shells}"
    else:
        assert not has_shell and not shell_files(df), (
            f"{df.rel}: a shell the charts never run (keep the runtime distroless)")


@pytest.mark.parametrize("repository", IMAGES)
def test_user_matches_the_charts_security_context(repository):
    df = dockerfile(repository)
    users = df.final.all("USER")
    assert users, f"{df.rel}: no USER in the final stage"
    user = users[-1].args
    m = re.fullmatch(r"(\d+):(\d+)", user)
    assert m, f"{df.rel}: USER {user!r}: numeric uid:gid (runAsNonRoot can only verify a numeric user)"
    uid, gid = int(m.group(1)), int(m.group(2))
    assert uid != 0 and gid != 0, f"{df.rel}: USER {user} is root"
    for c in all_containers()[repository]:
        assert c.security("runAsNonRoot") is True, f"{c.where}: runAsNonRoot"
        assert c.security("runAsUser") == uid, f"{c.where} runs as uid {c.security('runAsUser')}, {df.rel} has USER {user}"
        assert c.security("runAsGroup") == gid, f"{c.where} runs as gid {c.security('runAsGroup')}, {df.rel} has USER {user}"
        assert c.security("readOnlyRootFilesystem") is True, f"{c.where}: readOnlyRootFilesystem"
    # A read-only root: the image declares nothing writable; the chart mounts the volumes.
    assert not df.final.all("VOLUME"), f"{df.rel}: VOLUME in the image (the chart mounts its own volumes)"


@pytest.mark.parametrize("repository", IMAGES)
def test_exposes_the_charts_ports(repository):
    df = dockerfile(repository)
    exposed = set()
    for expose in df.final.all("EXPOSE"):
        for word in expose.words():
            port, _, protocol = word.partition("/")
            exposed.add((int(port), (protocol or "tcp").lower()))
    declared = set()
    for c in default_containers().get(repository, []):
        for p in c.container.get("ports", []):
            declared.add((int(p["containerPort"]), p.get("protocol", "TCP").lower()))
    assert declared <= exposed, f"{df.rel}: the chart declares ports {sorted(declared - exposed)} not EXPOSEd"
    assert exposed <= declared, f"{df.rel}: EXPOSEs {sorted(exposed - declared)}, which no chart container declares"


@pytest.mark.parametrize("repository", IMAGES)
def test_labels_and_no_secrets(repository):
    df = dockerfile(repository)
    labels = df.final.assignments("LABEL")
    ws = workspace()["workspace"]["package"]
    expected = {
        "org.opencontainers.image.source": ws["repository"],
        "org.opencontainers.image.title": repository,
        "org.opencontainers.image.description": package(IMAGES[repository])["package"]["description"],
        "org.opencontainers.image.licenses": ws["license"],
    }
    for key, value in expected.items():
        assert labels.get(key) == value, f"{df.rel}: LABEL {key}={labels.get(key)!r}, expected {value!r}"
    for stage in df.stages:
        for keyword in ("ARG", "ENV"):
            for name in stage.assignments(keyword):
                assert not SECRET_NAME.search(name), f"{df.rel}: {keyword} {name} in stage {stage.name}: no secrets in images"
        for source in copied_sources(stage):
            assert not re.search(r"\.(pem|key|der)$|(^|/)\.env", source), f"{df.rel}: copies {source}"


@pytest.mark.parametrize("repository", IMAGES)
def test_header_says_how_to_build(repository):
    df = dockerfile(repository)
    command = f"docker build -f {df.rel} -t <registry>/{repository}:"
    assert any(line.startswith(command) and line.endswith(" .") for line in df.header), (
        f"{df.rel}: the header comment shows `{command}<tag> .` (context: the repository root)")
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    assert f"docker build -f {df.rel} -t " in docs, f"docs/kubernetes.md does not show how to build {repository}"


# --------------------------------------------------------------------------------------------
# .dockerignore
# --------------------------------------------------------------------------------------------


def ignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), ".dockerignore missing at the repository root (the build context)"
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert not line.startswith("!"), f".dockerignore: exceptions ({line}) are not understood by this test"
            patterns.append(line.strip("/"))
    return patterns


def pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: `**` any number of directories, `*` and `?` within
    one path element, `[...]` a class (Go's filepath.Match, as Docker uses)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the context path, or a directory above it, matches a pattern (Docker's rules,
    without exceptions)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(pattern_regex(p).fullmatch(prefix) for p in patterns for prefix in prefixes)


def test_dockerignore_keeps_the_context_small_and_the_sources_in():
    patterns = ignore_patterns()
    for path in ["target", "target/release/passage", ".git", ".git/config", ".tools/chartenv", "node_modules"]:
        assert ignored(path, patterns), f".dockerignore does not exclude {path}"
    for path in ["agent/target", "crates/pki/target", "tests/.env", "crates/pki/key.pem"]:
        assert ignored(path, patterns), f".dockerignore does not exclude {path}"
    for repository in IMAGES:
        df = dockerfile(repository)
        for stage in df.stages:
            for source in copied_sources(stage):
                assert not ignored(source, patterns), f"{df.rel} copies {source}, which .dockerignore excludes"
    # What a build needs inside the copied directories stays (e.g. the .proto files, migrations).
    for path in ["proto/passage/v1/gateway.proto", "crates/store/src/lib.rs", "proto/build.rs"]:
        assert not ignored(path, patterns), f".dockerignore excludes {path}"


# --------------------------------------------------------------------------------------------
# The chart's scripts, run with exactly the image's shell and applets
# --------------------------------------------------------------------------------------------


def image_filesystem(tmp_path: Path, df: Dockerfile, fakes: dict[str, str]) -> tuple[str, str]:
    """A PATH laid out like the image's: its PATH directories in order, holding the busybox
    applets the image links (to this machine's busybox) and stand-ins for its binaries.
    Returns (PATH, the shell that /bin/sh is)."""
    busybox = shutil.which("busybox")
    root = tmp_path / "image"
    for file in provided_files(df):
        target = root / file.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        name = PurePosixPath(file).name
        if name in fakes:
            target.write_text(fakes[name])
            target.chmod(0o755)
        elif file.startswith("/busybox/") or file == "/bin/sh":
            target.symlink_to(busybox)  # busybox runs the applet its link is named after
    path = ":".join(str(root / d.lstrip("/")) for d in image_path(df))
    return path, str(root / "bin" / "sh")


def python_fake(body: str) -> str:
    return f"#!{sys.executable}\nimport os, sys, pathlib\n{body}\n"


needs_busybox = pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")


@needs_busybox
def test_enrol_script_runs_with_the_agent_images_applets(tmp_path):
    df = dockerfile("passage-agent")
    m = rendered_set("passage-agent", "agent-ldap.yaml")
    workload = next(w for w, _ in pod_specs(m) if w["kind"] == "StatefulSet")
    calls = tmp_path / "calls"
    fake = python_fake(
        'pathlib.Path(os.environ["CALLS"]).open("a").write(" ".join(sys.argv[1:]) + " token=" + os.environ["PASSAGE_ENROLMENT_TOKEN"] + "\\n")\n'
        'state = pathlib.Path(os.environ["STATE_DIR"]); state.mkdir(parents=True, exist_ok=True)\n'
        '(state / "agent-cert.pem").write_text("cert\\n")')
    path, sh = image_filesystem(tmp_path, df, {"passage-agent": fake})
    secrets = {
        "passage-services-ca": {"ca.crt": b"CA\n"},
        "passage-ldap-bind": {"password": b"pw"},
        "corp-ldap-ca": {"ca.crt": b"CA\n"},
        "passage-enrolment-tokens": {"token-0": b"pet_zero\n", "token-1": b"pet_one"},
    }
    pod = FakePod(tmp_path / "pod", m, workload, secrets)
    c = pod.mount("enrol")
    assert c["command"][0] == "/bin/sh"
    env = pod.env(c) | {
        "PATH": path,
        "STATE_DIR": str(pod.path("/var/lib/passage-agent/state")),
        "ENROLMENT_DIR": str(pod.path("/run/passage-input/enrolment")),
        "AGENT_CONFIG": "/etc/passage-agent/agent.toml",
        "CALLS": str(calls),
        "POD_NAME": "passage-passage-agent-1",
    }

    def enrol(extra=None):
        return subprocess.run([sh, str(pod.path(c["command"][1]))], env=env | (extra or {}),
                              capture_output=True, text=True, timeout=60)

    first = enrol()
    assert first.returncode == 0, f"enrol.sh with the image's applets {busybox_applets(df)}: {first.stderr}"
    assert calls.read_text() == "register --config /etc/passage-agent/agent.toml token=pet_one\n"
    again = enrol()  # enrolled: reads agent-id with cat
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert "not found" not in again.stderr, again.stderr
    missing = enrol({"POD_NAME": "passage-passage-agent-2", "STATE_DIR": str(tmp_path / "other")})
    assert missing.returncode == 1 and '"token-2"' in missing.stderr, missing.stderr


@needs_busybox
def test_helm_test_command_runs_with_the_cli_images_applets(tmp_path):
    df = dockerfile("passage")
    m = rendered_set("passage", "passage-ha.yaml")
    workload = next(w for w, _ in pod_specs(m) if w["kind"] == "Pod")
    fake = python_fake(
        'assert sys.argv[1] == "signin", sys.argv\n'
        'assert sys.stdin.read() == "pw\\n", "the password comes on standard input"\n'
        'print("id_token")')
    path, sh = image_filesystem(tmp_path, df, {"passage": fake})
    secrets = {
        "passage-test-user": {"username": b"alice@demo.passage.dev", "password": b"pw\n"},
        "passage-services-ca": {"ca.crt": b"CA\n"},
    }
    pod = FakePod(tmp_path / "pod", m, workload, secrets)
    c = pod.mount("signin")
    assert c["command"][:2] == ["/bin/sh", "-ec"]
    script = localise(c["command"][2], pod, {})
    result = subprocess.run([sh, "-ec", script], env=pod.env(c) | {"PATH": path},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"the helm test command with the image's applets {busybox_applets(df)}: {result.stderr}"
    assert "signed in as alice@demo.passage.dev" in result.stdout
