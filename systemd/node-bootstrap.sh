#!/bin/sh
# Berth node bootstrap: the user data of a node pool's instances on Alibaba Cloud (the pool's
# `user_data_file` in scheduler.toml). On first boot it installs the Berth units from the binaries
# baked into the node image (`berthctl install`), writes the agent's and the CSI driver's configs
# (the region's public endpoints, the instance's RAM role as credentials, the scheduler to report
# to), and starts both units.
#
# Set the two lines below for the pool, then point `user_data_file` at this file.
BERTH_SCHEDULER="${BERTH_SCHEDULER:-http://scheduler.internal:19470}"
BERTH_POOL="${BERTH_POOL:-default}"
#
# For a look without changing the machine: BERTH_ROOT=/tmp/x writes under that directory, installs
# nothing and starts nothing; BERTH_REGION skips asking the metadata service for the region.
set -eu

root="${BERTH_ROOT:-/}"
metadata="${BERTH_METADATA_URL:-http://100.100.100.200/latest/meta-data}"

if [ -n "${BERTH_REGION:-}" ]; then
  region="$BERTH_REGION"
else
  region="$(curl -fsS --retry 10 --retry-delay 1 "$metadata/region-id")"
fi
case "$region" in
  ''|*[!a-z0-9-]*) echo "berth bootstrap: region \"$region\" from $metadata/region-id is not a region id" >&2; exit 1 ;;
esac
case "$BERTH_SCHEDULER" in
  http://*|https://*) ;;
  *) echo "berth bootstrap: BERTH_SCHEDULER \"$BERTH_SCHEDULER\" is not an http(s) URL" >&2; exit 1 ;;
esac

if [ "$root" = "/" ]; then
  command -v berthctl >/dev/null || { echo "berth bootstrap: berthctl is not on this image; bake the Berth binaries into the node image" >&2; exit 1; }
  berthctl install
fi

cloud_settings() {
  cat <<EOF
[cloud]
endpoint = "https://ecs.$region.aliyuncs.com"
vpc_endpoint = "https://vpc.$region.aliyuncs.com"
nas_endpoint = "https://nas.$region.aliyuncs.com"
region = "$region"
credentials_source = "ram_role"
metadata_url = "$metadata"
EOF
}

mkdir -p "$root/etc/berth"
umask 077
{
  cloud_settings
  cat <<EOF

[scheduler]
endpoint = "$BERTH_SCHEDULER"
pool = "$BERTH_POOL"
EOF
} > "$root/etc/berth/agent.toml"
cloud_settings > "$root/etc/berth/csi.toml"

if [ "$root" = "/" ]; then
  systemctl daemon-reload
  systemctl enable --now berth-agent.service berth-csi.service
fi
echo "berth bootstrap: node of pool $BERTH_POOL in $region reporting to $BERTH_SCHEDULER"
