#!/usr/bin/env bash
# Validate the Prometheus/Alertmanager configuration in monitoring/.
# Needs promtool (Debian: prometheus) and amtool (Debian: prometheus-alertmanager).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

promtool check config monitoring/prometheus.yml
promtool check rules monitoring/alerts.yml
promtool test rules monitoring/alerts_test.yml
amtool check-config monitoring/alertmanager.yml
