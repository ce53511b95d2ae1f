package check

import (
	"strings"
	"testing"
)

func TestAlertsRulesForZeroed(t *testing.T) {
	in := "      - alert: X\n        expr: up == 0\n        for: 1m\n        labels: {severity: critical}\n"
	got := string(forLine.ReplaceAll([]byte(in), []byte("${1}0s")))
	if !strings.Contains(got, "        for: 0s\n") || strings.Contains(got, "1m") {
		t.Fatalf("for: not zeroed:\n%s", got)
	}
}
