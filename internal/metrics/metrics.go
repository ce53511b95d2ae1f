// Package metrics exports the daemon's state to Prometheus on its own
// registry. Gauges and counters are read from the manager at scrape time
// rather than kept in parallel, so the metrics cannot drift from the state
// they describe.
package metrics

import (
	"net/netip"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/alloc"
)

// State is what the collector reads at scrape time (the manager).
type State interface {
	Counters() alloc.CounterSnapshot
	Status() api.Status
	SetAside() []netip.Addr
}

// CommitStats reports the store's group commits (the store).
type CommitStats interface {
	Stats() (commits, ops uint64)
}

// Metrics holds the registry and the instruments the server feeds.
type Metrics struct {
	Registry *prometheus.Registry
	// RequestDuration times every request on the control socket, by
	// operation: ipvirt_request_duration_seconds.
	RequestDuration *prometheus.HistogramVec
	// ConnsRefused counts connections turned away at a connection cap
	// (one uid's share, or the daemon's), on the socket and over HTTP:
	// ipvirt_connections_refused_total.
	ConnsRefused *prometheus.CounterVec
}

// New builds the registry: the state collector, request timings and the Go
// runtime and process collectors.
func New(st State, store CommitStats) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ipvirt_request_duration_seconds",
			Help: "Time to answer a request on the control socket, from reading it to writing the reply.",
			// From a cached answer (microseconds) to a DHCP exchange (seconds).
			Buckets: prometheus.ExponentialBuckets(5e-6, 4, 12),
		}, []string{"op"}),
		ConnsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipvirt_connections_refused_total",
			Help: "Connections closed at once because the caller's uid, or the daemon, held the most it may, by listener: socket or http.",
		}, []string{"listener"}),
	}
	// Both listeners from the start: a refusal count that is absent
	// until the first flood would leave alerts and graphs empty.
	m.ConnsRefused.WithLabelValues("socket")
	m.ConnsRefused.WithLabelValues("http")
	reg.MustRegister(m.RequestDuration, m.ConnsRefused, &collector{st: st, store: store},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

var (
	descAllocations = prometheus.NewDesc("ipvirt_allocations_total",
		"Answers given, by result: vip, mip (machine IP) or denied.", []string{"result"}, nil)
	descDecisions = prometheus.NewDesc("ipvirt_decisions_total",
		"Answers given, by the rule that decided: virtualize, disabled, out-of-scope, unregistered-session, no-session, admin, not-listed, exhausted.", []string{"rule"}, nil)
	descExhausted = prometheus.NewDesc("ipvirt_exhausted_total",
		"Callers the rules would virtualize that got no VIP because none was available.", nil, nil)
	descReleases = prometheus.NewDesc("ipvirt_releases_total",
		"Leases released, by reason.", []string{"reason"}, nil)
	descLeases = prometheus.NewDesc("ipvirt_leases_active",
		"VIPs currently held.", nil, nil)
	descPending = prometheus.NewDesc("ipvirt_leases_pending",
		"VIP acquisitions in progress.", nil, nil)
	descPool = prometheus.NewDesc("ipvirt_pool_addresses",
		"Addresses of the static pool, by state (absent for DHCP, whose pool size is the server's).", []string{"state"}, nil)
	descDuplicates = prometheus.NewDesc("ipvirt_duplicate_vips",
		"Self-check: VIPs held by more than one live holder. Anything but 0 is a bug.", nil, nil)
	descSessions = prometheus.NewDesc("ipvirt_sessions",
		"Live login sessions seen by the last scan.", nil, nil)
	descHealthy = prometheus.NewDesc("ipvirt_source_healthy",
		"1 when the address source can grant new leases.", []string{"source"}, nil)
	descEnabled = prometheus.NewDesc("ipvirt_enabled",
		"1 when IP virtualization is enabled.", []string{"mode"}, nil)
	descSetAside = prometheus.NewDesc("ipvirt_addresses_set_aside",
		"Pool addresses no lease holds that are kept out of the pool because sockets on this host are bound to them.", nil, nil)
	descStoreHealthy = prometheus.NewDesc("ipvirt_store_healthy",
		"1 when the last lease store commit reached the disk.", nil, nil)
	descCommits = prometheus.NewDesc("ipvirt_store_commits_total",
		"Transactions (fsyncs) of the lease store.", nil, nil)
	descWrites = prometheus.NewDesc("ipvirt_store_writes_total",
		"Lease store writes; divided by commits, the group-commit batch size.", nil, nil)
)

type collector struct {
	st    State
	store CommitStats
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAllocations, descDecisions, descExhausted, descReleases, descLeases,
		descPending, descPool, descDuplicates, descSessions, descHealthy, descEnabled, descStoreHealthy, descCommits, descWrites,
		descSetAside} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	cnt := c.st.Counters()
	for _, k := range []wire.Kind{wire.KindVIP, wire.KindMIP, wire.KindDenied} {
		ch <- prometheus.MustNewConstMetric(descAllocations, prometheus.CounterValue, float64(cnt.Results[k]), k.String())
	}
	for rule, n := range cnt.Rules {
		ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(n), string(rule))
	}
	ch <- prometheus.MustNewConstMetric(descExhausted, prometheus.CounterValue, float64(cnt.Rules[alloc.RuleExhausted]))
	for why, n := range cnt.Releases {
		ch <- prometheus.MustNewConstMetric(descReleases, prometheus.CounterValue, float64(n), why)
	}
	s := c.st.Status()
	ch <- prometheus.MustNewConstMetric(descLeases, prometheus.GaugeValue, float64(s.Leases))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(s.Pending))
	if s.PoolSize >= 0 {
		ch <- prometheus.MustNewConstMetric(descPool, prometheus.GaugeValue, float64(s.PoolFree), "free")
		ch <- prometheus.MustNewConstMetric(descPool, prometheus.GaugeValue, float64(s.PoolSize-s.PoolFree), "used")
	}
	ch <- prometheus.MustNewConstMetric(descDuplicates, prometheus.GaugeValue, float64(s.DuplicateVIP))
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(s.Sessions))
	ch <- prometheus.MustNewConstMetric(descSetAside, prometheus.GaugeValue, float64(len(c.st.SetAside())))
	ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, b2f(s.Healthy), s.Source)
	ch <- prometheus.MustNewConstMetric(descEnabled, prometheus.GaugeValue, b2f(s.Enabled), s.Mode)
	ch <- prometheus.MustNewConstMetric(descStoreHealthy, prometheus.GaugeValue, b2f(s.StoreHealthy))
	if c.store != nil {
		commits, ops := c.store.Stats()
		ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(commits))
		ch <- prometheus.MustNewConstMetric(descWrites, prometheus.CounterValue, float64(ops))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
