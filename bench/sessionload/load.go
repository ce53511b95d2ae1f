package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
)

type options struct {
	sessions, connects, wave int
	think                    time.Duration
	seed                     int64
}

// load is one run: the listener, the variants and what to undo.
type load struct {
	o       options
	tools   benchkit.Tools
	results string
	ln      *benchkit.Listener
	undo    []func()
	// preloadd is the daemon whose CPU time the run reports.
	preloadd *daemonproc.Daemon
}

func (l *load) onClose(f func()) { l.undo = append(l.undo, f) }

func (l *load) close() {
	for i := len(l.undo) - 1; i >= 0; i-- {
		l.undo[i]()
	}
}

// Pools: /20s of 4,094 addresses, more than a variant's sessions (2,000),
// kept apart from every other bench's and test's loopback addresses.
var (
	machineIP   = netip.MustParseAddr("127.0.0.1")
	preloadPool = netip.MustParsePrefix("127.80.0.0/20")
	bpfPool     = netip.MustParsePrefix("127.81.0.0/20")
)

func run(o options) error {
	// At least five rounds: a wave per variant each.
	o.wave = min(o.wave, o.sessions/5)
	work, results, err := benchkit.WorkDir()
	if err != nil {
		return err
	}
	l := &load{o: o, results: results}
	defer l.close()
	l.onClose(func() { os.RemoveAll(work) })
	if l.tools, err = benchkit.Build(work); err != nil {
		return err
	}
	if l.ln, err = benchkit.Listen("127.0.0.1:0"); err != nil {
		return err
	}
	l.onClose(func() { l.ln.Close() })

	plain, err := l.variant("no interceptor", "plain", netip.Prefix{}, "")
	if err != nil {
		return err
	}
	pre, err := l.variant("libipvirt.so (preload)", "preload", preloadPool, "")
	if err != nil {
		return err
	}
	pre.env = []string{"LD_PRELOAD=" + l.tools.Lib, "IPVIRT_SOCKET=" + pre.daemon.Socket}
	l.preloadd = pre.daemon
	kern, err := l.variant("eBPF (interceptor: bpf)", "bpf", bpfPool, "interceptor: bpf\n")
	if err != nil {
		return err
	}
	kern.waitVIP = true
	if err := kern.checkKernel(); err != nil {
		return err
	}
	vs := []*variant{plain, pre, kern}

	rounds := (o.sessions + o.wave - 1) / o.wave
	fmt.Fprintf(os.Stderr, "sessionload: %d rounds of %d waves of up to %d sessions\n", rounds, len(vs), o.wave)
	for r := 0; r < rounds; r++ {
		first := r * o.wave
		count := min(o.wave, o.sessions-first)
		for i := range vs {
			v := vs[(i+r)%len(vs)]
			if err := l.wave(v, first, count); err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, v.name, err)
			}
		}
		fmt.Fprintf(os.Stderr, "round %d/%d done (%d sessions per variant so far)\n", r+1, rounds, first+count)
	}
	l.report(vs)
	for _, v := range vs {
		if v.pool.IsValid() && v.fromVIP == 0 {
			return fmt.Errorf("%s: not one connect left from a VIP: the run measured no interceptor", v.name)
		}
	}
	return nil
}

// variant makes a variant's cgroup and, with a pool, its ipvirtd (static
// pool on lo, scoped to the cgroup, audit sessions, the given extra
// config).
func (l *load) variant(name, tag string, pool netip.Prefix, extra string) (*variant, error) {
	g, err := cgroup.Create(fmt.Sprintf("ipvirt-bench-load-%d-%s", os.Getpid(), tag))
	if err != nil {
		return nil, err
	}
	l.onClose(func() { g.Remove() })
	v := &variant{name: name, group: g, pool: pool}
	if !pool.IsValid() {
		return v, nil
	}
	dir := filepath.Join(filepath.Dir(l.results), tag)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	first, last := pool.Addr().Next(), lastHost(pool)
	body := fmt.Sprintf("adapter: lo\nsource: static\nsession_identity: audit\nadmins: {users: [], groups: []}\n"+
		"static_pool: {start: %s, end: %s, subnet_mask: %s}\nscope: %s\n%s",
		first, last, mask(pool), g.Path, extra)
	d, err := daemonproc.New(dir, body, false)
	if err != nil {
		return nil, err
	}
	if err := d.Start(context.Background()); err != nil {
		return nil, err
	}
	// SIGTERM: a daemon with the kernel interceptor then detaches it.
	l.onClose(func() { d.Stop(syscall.SIGTERM) })
	v.daemon = d
	return v, nil
}

// checkKernel fails unless the daemon runs its eBPF programs (a host
// without them would make the variant a second no-interceptor run), and
// says how new sessions reach it.
func (v *variant) checkKernel() error {
	c, err := v.daemon.Client()
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Status()
	if err != nil {
		return fmt.Errorf("status of the bpf daemon: %w", err)
	}
	if !strings.HasPrefix(st.Interceptor, "bpf") {
		return fmt.Errorf("the bpf daemon runs %q: the kernel interceptor is not available here", st.Interceptor)
	}
	v.note = "ipvirtd: interceptor " + st.Interceptor
	return nil
}

func lastHost(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	n := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	n-- // not the broadcast address
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

func mask(p netip.Prefix) netip.Addr {
	m := ^uint32(0) << (32 - p.Bits())
	return netip.AddrFrom4([4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)})
}
