#!/usr/bin/env bash
# Make PostgreSQL and RabbitMQ available on 127.0.0.1 on a Debian machine without Docker:
# start them if they are stopped, install them from Debian's packages if they are missing.
# Also installs, from PyPI, the OASIS STIX validator (`stix2_validator`) the export tests use and
# `kubernetes-validate`, which tests/deploy.rs checks the Kubernetes manifests with, and
# the OASIS TAXII 2.1 server (`medallion`) the TAXII tests pull from.
# Idempotent; safe to run before every test run. Needs root (or sudo) only to install or start.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

log() { printf 'services: %s\n' "$*" >&2; }

wait_for() { # name, command
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then log "$name is up"; return 0; fi
    sleep 1
  done
  log "$name did not come up in 60 s"; return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q; }

postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "installing PostgreSQL from Debian's packages"
    apt_install postgresql postgresql-client
  fi
  if pg_ready; then log "PostgreSQL is up"; else
    local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
    log "starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL pg_ready
  fi
  # Tests connect as postgres over TCP without a password (trust), as on the CI machines.
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
    local hba; hba=$($SUDO -u postgres psql -Atc 'show hba_file' 2>/dev/null || true)
    if [ -n "$hba" ]; then
      log "allowing trust auth for local TCP connections in $hba"
      $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
      $SUDO -u postgres psql -Atc 'select pg_reload_conf()' >/dev/null
    fi
  fi
}

rabbit_ready() { rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing RabbitMQ from Debian's packages"
    apt_install rabbitmq-server
  fi
  if rabbit_ready; then log "RabbitMQ is up"; else
    log "starting RabbitMQ"
    $SUDO rabbitmq-server -detached || true
    wait_for RabbitMQ rabbit_ready
  fi
}

# A command-line tool from PyPI, if its command is missing: pip_tool COMMAND PACKAGE.
pip_tool() {
  local command=$1 package=$2
  if command -v "$command" >/dev/null 2>&1; then log "$command is installed"; return 0; fi
  log "installing $command (pip install $package)"
  local pip
  pip=$(command -v pip3 || command -v pip || true)
  if [ -z "$pip" ]; then
    log "no pip: installing python3-pip from Debian's packages"
    apt_install python3-pip
    pip=pip3
  fi
  # Debian's own Python refuses system-wide pip installs (PEP 668) unless told otherwise.
  $SUDO "$pip" install -q "$package" \
    || $SUDO "$pip" install -q --break-system-packages "$package"
  command -v "$command" >/dev/null 2>&1 || { log "$command is still not on PATH"; return 1; }
}

postgres
rabbitmq
# The OASIS STIX 2.1 validator, which the export tests run on an exported bundle.
pip_tool stix2_validator stix2-validator
# The Kubernetes schemas (bundled, no cluster needed), which tests/deploy.rs checks
# deploy/kubernetes against.
pip_tool kubernetes-validate kubernetes-validate
# medallion, the OASIS TAXII 2.1 reference server, which tests/taxii.rs pulls from.
pip_tool medallion medallion
