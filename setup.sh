#!/usr/bin/env bash
# Sets up a machine for pepnet, then runs the command given, if any:
#
#   ./setup.sh cargo test --release
#
# It installs what is missing, and nothing where everything is present (so it costs a second
# on every later run):
# - a Vulkan driver: Mesa's (lavapipe, Vulkan on the CPU, where there is no GPU). Without one,
#   wgpu falls back to OpenGL, hundreds of times slower. On Debian 12, Mesa 25 from
#   bookworm-backports: Debian 12's own Mesa 22 runs our kernels about six times slower.
# - redis-server (and redis-cli), which the embedding-store tests start as a Redis Cluster on
#   loopback ports.
# - Rust (through rustup) when cargo is missing.
# Root or sudo is needed only when something must be installed.
set -euo pipefail

have_driver() {
    # (grep without -q: an early exit would fail ldconfig with SIGPIPE under pipefail)
    [ -n "$(find /usr/share/vulkan/icd.d /etc/vulkan/icd.d -name '*.json' 2>/dev/null)" ] \
        && /sbin/ldconfig -p | grep 'libvulkan\.so\.1' >/dev/null
}
mesa_version() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! have_driver || [[ "$(mesa_version)" == 22.* ]]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        have_driver || { echo "setup: no Vulkan driver, and no apt-get to install Mesa's; install your GPU's Vulkan driver or Mesa's lavapipe" >&2; exit 1; }
    else
        echo "setup: installing Mesa's Vulkan driver" >&2
        if grep -qs bookworm /etc/os-release && [ -f /etc/apt/sources.list.d/debian.sources ] \
            && [ ! -f /etc/apt/sources.list.d/backports.sources ]; then
            sed -n '1,/^$/p' /etc/apt/sources.list.d/debian.sources | grep -v '^#' \
                | sed 's/^Suites:.*/Suites: bookworm-backports/' \
                | as_root tee /etc/apt/sources.list.d/backports.sources >/dev/null
        fi
        as_root apt-get update -q
        if grep -qs bookworm /etc/os-release; then
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers libvulkan1
        else
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mesa-vulkan-drivers libvulkan1
        fi
        have_driver || { echo "setup: no Vulkan driver could be installed" >&2; exit 1; }
    fi
fi

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing redis-server" >&2
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
        # The package may start a system-wide server; the tests start their own nodes.
        as_root service redis-server stop >/dev/null 2>&1 || true
    else
        echo "setup: redis-server is missing (the embedding-store tests need it); install it" >&2
    fi
fi

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: installing Rust (rustup)" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    . "$HOME/.cargo/env"
fi

if [ $# -gt 0 ]; then
    exec "$@"
fi
