//go:build tools

// Package promtool pins the promtool that scripts/check-monitoring.sh builds to check and
// unit-test deploy/monitoring/devheal-alerts.yaml. Nothing here is product code.
package promtool

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
