package runner

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipvirt/ipvirt/sim/scenario/check"
)

// Metrics are the simulator's own: the connect() latency clients measured,
// by interceptor, and the database server's counters.
type Metrics struct {
	Registry *prometheus.Registry
	connect  *prometheus.HistogramVec
}

// NewMetrics returns an empty set.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		connect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ipvirt_sim_connect_seconds",
			Help: "Time the simulator's clients spent in connect(), by interceptor (none, preload, bpf).",
			// 5 µs to ~80 ms: a loopback connect is tens of µs, a first
			// call through ipvirtd adds one socket round trip.
			Buckets: prometheus.ExponentialBuckets(5e-6, 2, 15),
		}, []string{"interceptor"}),
	}
	m.Registry.MustRegister(m.connect)
	return m
}

func (m *Metrics) observe(interceptor string, c *check.ClientResult) {
	if c.Source.IsValid() {
		m.connect.WithLabelValues(interceptor).Observe(c.Connect.Seconds())
	}
}
