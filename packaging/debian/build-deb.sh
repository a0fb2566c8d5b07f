#!/usr/bin/env bash
# Builds the passage-agent Debian package from a built binary, with dpkg-deb alone (no
# cargo-deb, nothing to install beyond Debian's own tools):
#
#   packaging/debian/build-deb.sh target/release/passage-agent dist/
#
# Prints the path of the .deb it wrote: OUTDIR/passage-agent_VERSION_ARCH.deb, VERSION from the
# workspace Cargo.toml ([workspace.package] version), ARCH from `dpkg --print-architecture`.
# Uses dpkg-shlibdeps (dpkg-dev) for the versioned libc6/libgcc-s1 dependencies and strip
# (binutils, which dpkg-dev pulls in) like dh_strip; without them Depends names libc6 unversioned
# and the binary is shipped as given.
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 BINARY OUTDIR" >&2
  exit 2
fi
binary=$1
outdir=${2%/}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

[ -x "$binary" ] || { echo "$0: $binary is not an executable file" >&2; exit 1; }

# [workspace.package] version = "X" in the workspace manifest.
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
  "$root/Cargo.toml")
if ! printf '%s' "$version" | grep -Eq '^[0-9][0-9A-Za-z.+-]*$'; then
  echo "$0: no usable [workspace.package] version in $root/Cargo.toml (got '$version')" >&2
  exit 1
fi
# A semver pre-release (1.2.0-rc.1) must sort before its release in dpkg: 1.2.0~rc.1.
version=${version/-/\~}
arch=$(dpkg --print-architecture)
package=passage-agent

umask 022
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# debian/<package>/ is where dpkg-shlibdeps expects a package's files.
mkdir -p "$work/debian"
printf 'Source: passage\n\nPackage: %s\nArchitecture: any\n' "$package" > "$work/debian/control"
pkg=$work/debian/$package

install -D -m 0755 "$binary" "$pkg/usr/bin/passage-agent"
if command -v strip >/dev/null 2>&1; then
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$pkg/usr/bin/passage-agent"
fi
install -D -m 0644 "$here/passage-agent.service" "$pkg/lib/systemd/system/passage-agent.service"

# The example configuration: docs/examples/agent.toml with the paths of this package (state in
# /var/lib/passage-agent, configuration and secrets in /etc/passage). Not a conffile: the
# operator copies it to agent.toml, which the package never ships nor touches.
install -d -m 0755 "$pkg/etc/passage"
{
  echo "# Example configuration of the Passage agent (package passage-agent $version)."
  echo "# Copy to /etc/passage/agent.toml and edit; see /usr/share/doc/passage-agent/agent-on-a-vm.md."
  echo "# This .example file is replaced on every upgrade; agent.toml is yours and never touched."
  sed -e 's|^state_dir[[:space:]]*=[[:space:]]*"[^"]*"|state_dir = "/var/lib/passage-agent"|' \
      -e 's|/etc/passage-agent/|/etc/passage/|g' \
      "$root/docs/examples/agent.toml"
} > "$pkg/etc/passage/agent.toml.example"
chmod 0644 "$pkg/etc/passage/agent.toml.example"
grep -q '^state_dir = "/var/lib/passage-agent"' "$pkg/etc/passage/agent.toml.example" || {
  echo "$0: docs/examples/agent.toml has no state_dir line to set" >&2
  exit 1
}

doc=$pkg/usr/share/doc/$package
install -d -m 0755 "$doc"
install -m 0644 "$root/docs/agent-on-a-vm.md" "$doc/agent-on-a-vm.md"
cat > "$doc/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: passage
Source: https://example.invalid/passage

Files: *
Copyright: The Passage authors
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this file except in compliance with the License. You may obtain a copy of
 the License at
 .
     http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
 WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 License for the specific language governing permissions and limitations under
 the License.
 .
 On Debian systems, the complete text of the Apache License 2.0 can be found
 in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
chmod 0644 "$doc/copyright"

# Shared-library dependencies of the binary, as dh_shlibdeps would compute them (it finds the
# package's root by its DEBIAN directory).
install -d -m 0755 "$pkg/DEBIAN"
shlibs=libc6
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
  shlibs=$(cd "$work" && dpkg-shlibdeps -O "debian/$package/usr/bin/passage-agent" \
    | sed -n 's/^shlibs:Depends=//p')
  [ -n "$shlibs" ] || shlibs=libc6
fi

installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: $package
Version: $version
Architecture: $arch
Maintainer: Passage maintainers <passage@example.invalid>
Installed-Size: $installed_size
Depends: adduser, $shlibs
Section: net
Priority: optional
Homepage: https://example.invalid/passage
Description: Passage agent: pass-through authentication against AD/LDAP
 The on-premises agent of Passage. It only dials out, to the cloud
 dispatchers, receives sign-ins' sealed passwords over those streams and checks
 them against Active Directory or another LDAP directory, so that passwords
 are neither stored in nor synchronised to the cloud.
 .
 Runs as the passage-agent system user under a hardened systemd unit, which
 the package installs but does not enable: write /etc/passage/agent.toml and
 enrol the agent (passage-agent register) first.
CONTROL
for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$pkg/DEBIAN/$script"
done

# Reproducible: file times clamped to the last commit's.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  # safe.directory: run as root (sudo) in a checkout another user owns, git would refuse it.
  SOURCE_DATE_EPOCH=$(git -c safe.directory="$root" -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
  export SOURCE_DATE_EPOCH
fi

mkdir -p "$outdir"
deb="$outdir/${package}_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$pkg" "$deb" >/dev/null
echo "$deb"
