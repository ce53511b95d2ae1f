package dhcp

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	descDHCPExchanges = prometheus.NewDesc("ipvirt_dhcp_exchanges_total",
		"DHCP exchanges started: acquisitions and renew, rebind and reboot attempts.", nil, nil)
	descDHCPRetransmits = prometheus.NewDesc("ipvirt_dhcp_retransmits_total",
		"DISCOVER and REQUEST retransmissions: a rising rate means servers are slow or packets are lost.", nil, nil)
	descDHCPReceived = prometheus.NewDesc("ipvirt_dhcp_received_total",
		"Server messages acted on, by type (offer, ack, nak).", []string{"type"}, nil)
	descDHCPSent = prometheus.NewDesc("ipvirt_dhcp_sent_total",
		"DECLINEs (address found in use by the ARP probe) and RELEASEs sent.", []string{"type"}, nil)
	descDHCPAttempts = prometheus.NewDesc("ipvirt_dhcp_extend_attempts_total",
		"Lease extension requests sent, by phase: renew (unicast after T1), rebind (broadcast after T2).", []string{"phase"}, nil)
	descDHCPExtended = prometheus.NewDesc("ipvirt_dhcp_extended_total",
		"Leases extended, by phase (renew, rebind, reboot: an expired lease recovered after a restart).", []string{"phase"}, nil)
	descDHCPSteered = prometheus.NewDesc("ipvirt_dhcp_steered_requests_total",
		"REQUESTs for an address near an OFFER another exchange of this host was already requesting (a server that offers one address to every exchange from one MAC, such as dnsmasq).", nil, nil)
	descDHCPExpiries = prometheus.NewDesc("ipvirt_dhcp_expiries_total",
		"Leases that ran out unrenewed: their VIPs were withdrawn.", nil, nil)
	descDHCPTimeouts = prometheus.NewDesc("ipvirt_dhcp_timeouts_total",
		"Acquisitions that got no lease within dhcp.lease_wait.", nil, nil)
	descDHCPInflight = prometheus.NewDesc("ipvirt_dhcp_inflight",
		"Exchanges awaiting an answer now (at most dhcp.max_inflight).", nil, nil)
)

// collector exports a source's Counters.
type collector struct{ s *Source }

// Metrics implements source.MetricsProvider: the counters as Prometheus
// metrics (InFlight as a gauge).
func (s *Source) Metrics() prometheus.Collector { return collector{s} }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDHCPExchanges, descDHCPRetransmits, descDHCPReceived, descDHCPSent,
		descDHCPAttempts, descDHCPExtended, descDHCPSteered, descDHCPExpiries, descDHCPTimeouts, descDHCPInflight} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	n := c.s.Counters()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descDHCPExchanges, n.Exchanges)
	counter(descDHCPRetransmits, n.Retransmits)
	counter(descDHCPReceived, n.Offers, "offer")
	counter(descDHCPReceived, n.Acks, "ack")
	counter(descDHCPReceived, n.Naks, "nak")
	counter(descDHCPSent, n.Declines, "decline")
	counter(descDHCPSent, n.Releases, "release")
	counter(descDHCPAttempts, n.RenewAttempts, "renew")
	counter(descDHCPAttempts, n.RebindAttempts, "rebind")
	counter(descDHCPExtended, n.Renewals, "renew")
	counter(descDHCPExtended, n.Rebinds, "rebind")
	counter(descDHCPExtended, n.Reboots, "reboot")
	counter(descDHCPSteered, n.Steered)
	counter(descDHCPExpiries, n.Expiries)
	counter(descDHCPTimeouts, n.Timeouts)
	ch <- prometheus.MustNewConstMetric(descDHCPInflight, prometheus.GaugeValue, float64(n.InFlight))
}
