// Command dhcpstorm measures a logon storm against ipvirt's DHCP source:
// N holders acquire a lease at once from the synthetic DHCP server over a
// veth pair between two network namespaces. It reports leases per second
// and the time to the last lease, beside the same server's rate for a bare
// client loop (plain nclient4 DORA exchanges, no ipvirt logic) measured in
// the same run, and their ratio.
//
// Needs root (namespaces, packet sockets). Example:
//
//	go run ./bench/dhcpstorm -n 500 -runs 5
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source/dhcp"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
	"github.com/ipvirt/ipvirt/sim/topology"
)

func main() {
	n := flag.Int("n", 500, "concurrent holders per storm")
	runs := flag.Int("runs", 5, "storms per variant (the median is reported)")
	inflight := flag.Int("inflight", dhcp.DefaultMaxInflight, "ipvirt max_inflight")
	arp := flag.Bool("arp", false, "also run ipvirt with RFC 5227 probing (arp_probe_wait -arp-wait)")
	arpWait := flag.Duration("arp-wait", dhcp.DefaultARPProbeWait, "arp_probe_wait for -arp")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "dhcpstorm: needs root (network namespaces, packet sockets)")
		os.Exit(2)
	}
	l, err := newLAN()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dhcpstorm:", err)
		os.Exit(1)
	}
	defer l.close()

	type variant struct {
		name string
		run  func(run int) (time.Duration, error)
	}
	variants := []variant{
		{"nclient4 (server's own rate)", func(run int) (time.Duration, error) { return l.bare(*n, *inflight, run) }},
		{"ipvirt dhcp source", func(run int) (time.Duration, error) { return l.ipvirt(*n, *inflight, false, 0) }},
	}
	if *arp {
		variants = append(variants, variant{fmt.Sprintf("ipvirt + ARP probe %s", *arpWait),
			func(run int) (time.Duration, error) { return l.ipvirt(*n, *inflight, true, *arpWait) }})
	}
	medians := map[string]time.Duration{}
	fmt.Printf("storm of %d holders, %d runs each, GOMAXPROCS-visible CPUs: %d\n\n", *n, *runs, numCPU())
	fmt.Printf("%-34s %12s %12s %12s %12s\n", "variant", "median", "best", "worst", "leases/s")
	for _, v := range variants {
		var ds []time.Duration
		for r := range *runs {
			d, err := v.run(r)
			if err != nil {
				fmt.Fprintf(os.Stderr, "dhcpstorm: %s run %d: %v\n", v.name, r, err)
				os.Exit(1)
			}
			ds = append(ds, d)
		}
		slices.Sort(ds)
		med := ds[len(ds)/2]
		medians[v.name] = med
		fmt.Printf("%-34s %12s %12s %12s %12.0f\n", v.name, med.Round(time.Millisecond), ds[0].Round(time.Millisecond),
			ds[len(ds)-1].Round(time.Millisecond), float64(*n)/med.Seconds())
	}
	base, ipv := medians[variants[0].name], medians[variants[1].name]
	fmt.Printf("\nipvirt/server-rate ratio: %.2f (ipvirt leases/s ÷ bare nclient4 leases/s)\n", base.Seconds()/ipv.Seconds())
	fmt.Printf("targets: >= 1000 leases/s: %v; %d-holder storm under 2s: %v\n",
		float64(*n)/ipv.Seconds() >= 1000, *n, ipv < 2*time.Second)
}

// server starts a fresh synthetic server in the srv namespace.
func (l *lan) server(n int) (*dhcpserver.Server, error) {
	var srv *dhcpserver.Server
	err := topology.In(l.srv, func() (err error) {
		srv, err = dhcpserver.Start(context.Background(), dhcpserver.Config{
			Interface:  "eth0",
			RangeStart: netip.MustParseAddr("10.97.1.0"),
			RangeEnd:   netip.AddrFrom4([4]byte{10, 97, byte(1 + (n+255)/256), 255}),
			PrefixLen:  16,
			LeaseTime:  time.Hour,
		}, nil)
		return err
	})
	return srv, err
}

// bare is the baseline: one nclient4 client, n DORAs with distinct client
// ids, inflight at a time.
func (l *lan) bare(n, inflight, run int) (time.Duration, error) {
	srv, err := l.server(n)
	if err != nil {
		return 0, err
	}
	defer srv.Close()
	var c *nclient4.Client
	if err := topology.In(l.cli, func() (err error) {
		c, err = nclient4.New("eth0", nclient4.WithTimeout(time.Second), nclient4.WithRetry(10))
		return err
	}); err != nil {
		return 0, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The same offered load as ipvirt's max_inflight: unbounded, nclient4's
	// unfiltered packet socket overflows and the run measures its 1s
	// retransmission timer, not the server.
	errs := make([]error, n)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	start := time.Now()
	var wg sync.WaitGroup
	for range min(inflight, n) {
		wg.Go(func() {
			for i := range next {
				_, errs[i] = c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte(fmt.Sprintf("bare-%d-%d", run, i)))))
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	for i, err := range errs {
		if err != nil {
			return 0, fmt.Errorf("client %d: %w", i, err)
		}
	}
	if got := len(srv.Leases()); got != n {
		return 0, fmt.Errorf("server holds %d leases, want %d", got, n)
	}
	return d, nil
}

// ipvirt runs the storm through the dhcp source.
func (l *lan) ipvirt(n, inflight int, arp bool, arpWait time.Duration) (time.Duration, error) {
	srv, err := l.server(n)
	if err != nil {
		return 0, err
	}
	defer srv.Close()
	cfg := dhcp.Config{MaxInflight: inflight, ARPProbe: &arp, ARPProbeWait: arpWait, LeaseWait: time.Minute}
	var s *dhcp.Source
	if err := topology.In(l.cli, func() error {
		ifc, err := dhcp.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		s, err = dhcp.New(cfg, ifc, []byte("dhcpstorm"), nil, nil)
		return err
	}); err != nil {
		return 0, err
	}
	defer s.Close()
	errs := make([]error, n)
	addrs := make([]netip.Addr, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			h := lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: uint32(i + 1)}}
			l, err := s.Acquire(context.Background(), h)
			addrs[i], errs[i] = l.Addr, err
		})
	}
	wg.Wait()
	d := time.Since(start)
	seen := map[netip.Addr]bool{}
	for i, err := range errs {
		if err != nil {
			return 0, fmt.Errorf("holder %d: %w", i, err)
		}
		if seen[addrs[i]] {
			return 0, fmt.Errorf("address %s handed out twice", addrs[i])
		}
		seen[addrs[i]] = true
	}
	return d, nil
}
