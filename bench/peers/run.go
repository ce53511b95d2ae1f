package main

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
	"github.com/ipvirt/ipvirt/sim/topology"
)

// bench is one run's state: what was built, what to undo, what was skipped.
type bench struct {
	n        int
	ref      string // another build of libipvirt.so to time beside this one's (-ref)
	work     string // the built programs
	results  string // where loops write their result lines
	tools    benchkit.Tools
	variants []*variant
	paired   []pairedResult
	skips    []string
	undo     []func()
}

// skip records a variant the host cannot run, and why.
func (b *bench) skip(name, why string) { b.skips = append(b.skips, name+": "+why) }

// onClose registers f to run when the bench ends, last registered first.
func (b *bench) onClose(f func()) { b.undo = append(b.undo, f) }

func (b *bench) close() {
	for i := len(b.undo) - 1; i >= 0; i-- {
		b.undo[i]()
	}
}

func run(rounds, n, pairs, pairN int, ref string) (skipped int, err error) {
	work, results, err := benchkit.WorkDir()
	if err != nil {
		return 0, err
	}
	b := &bench{n: n, ref: ref, work: work, results: results}
	defer b.close()
	b.onClose(func() { os.RemoveAll(work) })
	if b.tools, err = benchkit.Build(work); err != nil {
		return 0, err
	}
	root := os.Geteuid() == 0
	if root {
		// Namespaces of an earlier run that was killed before it could
		// remove them (their names carry the dead run's pid).
		topology.CleanupStale()
	}
	if err := b.setupLoopback(root); err != nil {
		return 0, err
	}
	if root {
		if err := b.setupVeth(); err != nil {
			return 0, err
		}
	} else {
		for _, name := range []string{vethPlain, nftName, ruleName} {
			b.skip(name, "needs root (network namespaces, nftables, ip rules)")
		}
	}

	for r := 0; r < rounds; r++ {
		// Each round starts one variant later, so none is always first
		// after a pause or always last.
		for i := range b.variants {
			v := b.variants[(i+r)%len(b.variants)]
			ns, err := v.once(b.n)
			if err != nil {
				return 0, fmt.Errorf("round %d, %s: %w", r+1, v.name, err)
			}
			v.samples = append(v.samples, ns)
		}
		fmt.Fprintf(os.Stderr, "round %d/%d done\n", r+1, rounds)
	}
	if pairs > 0 {
		if err := b.runPairs(pairs, pairN); err != nil {
			return 0, err
		}
	}
	b.report(rounds)
	b.reportPairs()
	return len(b.skips), nil
}

// variant is one way of giving the loop its source address.
type variant struct {
	name    string
	section section
	// run runs the loop once and returns its result line.
	run func(n int) (string, error)
	ln  counter
	// client is the source the loop's getsockname must report; invalid:
	// learnt from the first run, which must be in pool (libipvirt.so's VIP
	// is the daemon's choice), and the same ever after.
	client netip.Addr
	pool   netip.Prefix
	// server is the source the listener must see for every connection;
	// invalid: client (only NAT makes them differ).
	server netip.Addr
	// before and after, when set, run around each run (enforcement on).
	before, after func() error
	samples       []float64
}

// counter counts where a variant's connections (benchkit.Listener) or
// datagrams (benchkit.UDPListener) came from.
type counter interface {
	Take(want int, timeout time.Duration) map[netip.Addr]int
	Check(peers map[netip.Addr]int, want int, addr netip.Addr) string
}

type section int

const (
	loopback section = iota
	udp
	veth
)

// once runs the variant and proves it applied its address: on the
// client's side and on the server's, for every connection of the run.
func (v *variant) once(n int) (float64, error) {
	v.ln.Take(0, 0) // nothing earlier counts
	if v.before != nil {
		if err := v.before(); err != nil {
			return 0, err
		}
	}
	line, err := v.run(n)
	if v.after != nil {
		if aerr := v.after(); err == nil {
			err = aerr
		}
	}
	if err != nil {
		return 0, err
	}
	ns, src, err := benchkit.ParseLoop(line)
	if err != nil {
		return 0, err
	}
	if !v.client.IsValid() {
		if !v.pool.Contains(src) {
			return 0, fmt.Errorf("the loop left from %s, not an address of %s: the interceptor was not on the path", src, v.pool)
		}
		v.client = src
	}
	if src != v.client {
		return 0, fmt.Errorf("the loop left from %s, want %s: the variant did not apply its address", src, v.client)
	}
	server := v.server
	if !server.IsValid() {
		server = v.client
	}
	// The warm-up connect, outside the timing, counts too.
	if why := v.ln.Check(v.ln.Take(n+1, 10*time.Second), n+1, server); why != "" {
		return 0, fmt.Errorf("%s: the variant did not apply its address to every connection", why)
	}
	return ns, nil
}

// udpArgs is connectloop's command line for a timed loop of n sends,
// each from a fresh unconnected UDP socket, to host:port.
func (b *bench) udpArgs(n int, host netip.Addr, port int) []string {
	return []string{b.tools.Loop, "udploop", strconv.Itoa(n), host.String(), strconv.Itoa(port)}
}

// loopArgs is connectloop's command line for a timed loop of n connects
// to host:port, binding to bind first when it is valid (loopbind).
func (b *bench) loopArgs(n int, host netip.Addr, port int, bind netip.Addr) []string {
	if bind.IsValid() {
		return []string{b.tools.Loop, "loopbind", strconv.Itoa(n), host.String(), strconv.Itoa(port), bind.String()}
	}
	return []string{b.tools.Loop, "loop", strconv.Itoa(n), host.String(), strconv.Itoa(port)}
}
