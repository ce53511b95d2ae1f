package daemonproc

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// httpGetVia fetches url, dialling with dial when it is set.
func httpGetVia(dial func(ctx context.Context, network, addr string) (net.Conn, error), url string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	if dial != nil {
		c.Transport = &http.Transport{DialContext: dial, DisableKeepAlives: true}
	}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// SumMetric sums the samples of a metric in Prometheus text format whose
// label set contains every given `key="value"` pair. A metric with no
// matching sample sums to 0.
func SumMetric(body, name string, labels ...string) (float64, error) {
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		series, value := line[:sp], line[sp+1:]
		metric, labelText, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(labelText, l) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %q: %w", name, line, err)
		}
		sum += v
	}
	return sum, nil
}
