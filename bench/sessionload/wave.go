package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// variant is one way the sessions' processes get (or do not get) their
// VIP, and everything measured of it.
type variant struct {
	name    string
	group   *cgroup.Group      // its sessions live here; its daemon's scope
	pool    netip.Prefix       // where its VIPs come from; invalid: none
	daemon  *daemonproc.Daemon // nil: no interceptor
	env     []string           // for the sessions' processes
	waitVIP bool               // the VIP is pre-allocated: start the process once it is
	note    string

	lat     []float64 // every connect, ns
	first   []float64 // each session's first connect, ns
	fromVIP int
	fromMIP int
	// fellBack counts sessions whose library gave up on ipvirtd;
	// fallbackWhy is the first one's line.
	fellBack    int
	fallbackWhy string
	// sessions counts the sessions run; waits the time each wave spent
	// waiting for pre-allocation.
	sessions int
	waits    []time.Duration
	// cpu is the preload daemon's CPU time during this variant's waves.
	cpu time.Duration
}

// wave logs count sessions on (session first+i has login uid 62000+first+i),
// runs one think loop in each, and collects the loops' connects.
func (l *load) wave(v *variant, first, count int) error {
	cpu0, err := cpuTime(l.preloadd.PID())
	if err != nil {
		return err
	}
	sessions := make([]*loginsession.Session, 0, count)
	defer func() { closeAll(sessions) }()
	for i := range count {
		s, err := loginsession.StartWrapped(context.Background(), loginsession.Audit, uint32(62000+first+i), v.group.Wrap)
		if err != nil {
			return fmt.Errorf("logon %d: %w", first+i, err)
		}
		sessions = append(sessions, s)
	}
	if v.waitVIP {
		t0 := time.Now()
		if err := waitVIPs(v.daemon, sessions, 60*time.Second); err != nil {
			return err
		}
		v.waits = append(v.waits, time.Since(t0))
	}
	pids := make([]int, count)
	outs := make([]string, count)
	for i, s := range sessions {
		outs[i] = benchkit.OutPath(l.results)
		args := []string{"think", strconv.Itoa(l.o.connects), machineIP.String(), strconv.Itoa(l.ln.Port()),
			strconv.FormatInt(l.o.think.Microseconds(), 10), strconv.FormatInt(l.o.seed+int64(first+i), 10), outs[i]}
		if pids[i], err = s.RunEnvStderr(v.env, outs[i]+".err", l.tools.Loop, args...); err != nil {
			return fmt.Errorf("session %d: start the loop: %w", first+i, err)
		}
	}
	vips := map[netip.Addr]int{}
	for i, s := range sessions {
		text, err := benchkit.WaitOut(s, pids[i], outs[i], 10*time.Minute)
		if err != nil {
			return fmt.Errorf("session %d: %w", first+i, err)
		}
		stderr, _ := os.ReadFile(outs[i] + ".err")
		if err := v.add(text, string(stderr), first+i, vips); err != nil {
			return err
		}
	}
	cpu1, err := cpuTime(l.preloadd.PID())
	if err != nil {
		return err
	}
	v.cpu += cpu1 - cpu0
	v.sessions += count
	// The server's count: every connect arrived.
	want := count * l.o.connects
	if got := total(l.ln.Take(want, 10*time.Second)); got != want {
		return fmt.Errorf("the listener accepted %d connections, the loops made %d", got, want)
	}
	return nil
}

// add merges one loop's result into v, checking where its connects left
// from: no interceptor, all from the machine IP; with one, from a VIP of
// the variant's pool, one per session, none shared by two sessions of the
// wave (vips maps each VIP seen to its session). Under preload, a session
// whose first call timed out uses the machine IP for the rest of its life
// (the library backs off for 5 s): counted, not fatal, when the library's
// stderr line says so; a session with no VIP and no such line was not
// intercepted, and fails the run. Under eBPF, where the process starts
// after its VIP exists, any connect from the machine IP fails it.
func (v *variant) add(text, stderr string, session int, vips map[netip.Addr]int) error {
	lat, srcs, err := parseThink(text)
	if err != nil {
		return fmt.Errorf("session %d: %w", session, err)
	}
	var mine netip.Addr
	for i, src := range srcs {
		switch {
		case src == machineIP:
			if v.pool.IsValid() && v.waitVIP {
				return fmt.Errorf("session %d: connect %d left from the machine IP although its VIP was allocated: the eBPF programs were not on the path", session, i+1)
			}
			v.fromMIP++
		case v.pool.IsValid() && v.pool.Contains(src):
			if mine.IsValid() && src != mine {
				return fmt.Errorf("session %d left from %s and from %s: one session, two VIPs", session, mine, src)
			}
			if other, ok := vips[src]; ok && other != session {
				return fmt.Errorf("sessions %d and %d both left from %s", other, session, src)
			}
			mine, vips[src] = src, session
			v.fromVIP++
		default:
			return fmt.Errorf("session %d: connect %d left from %s, neither the machine IP nor an address of the variant's pool", session, i+1, src)
		}
	}
	if v.pool.IsValid() && !mine.IsValid() {
		if !strings.Contains(stderr, fallbackLine) {
			return fmt.Errorf("session %d: no connect left from a VIP and libipvirt.so did not say it fell back (stderr %q): the interceptor was not on the path", session, stderr)
		}
		if v.fellBack++; v.fallbackWhy == "" {
			_, line, _ := strings.Cut(stderr, fallbackLine)
			v.fallbackWhy = fallbackLine + firstLine(line)
		}
	}
	v.lat = append(v.lat, lat...)
	v.first = append(v.first, lat[0])
	return nil
}

// fallbackLine starts the line libipvirt.so writes when it cannot ask
// ipvirtd and uses the machine IP (lsp/preload/src/answer.c).
const fallbackLine = "ipvirt: ipvirtd at "

// waitVIPs polls the daemon until every session holds a VIP.
func waitVIPs(d *daemonproc.Daemon, sessions []*loginsession.Session, timeout time.Duration) error {
	c, err := d.Client()
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	for {
		rows, err := c.Sessions()
		if err != nil {
			return fmt.Errorf("sessions of the bpf daemon: %w", err)
		}
		has := map[uint32]bool{}
		for _, r := range rows {
			has[r.ID] = r.State == "vip"
		}
		missing := 0
		for _, s := range sessions {
			if !has[s.ID] {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d sessions have no VIP %s after logon", missing, len(sessions), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// closeAll logs the sessions off, a few at a time (each waits until the
// kernel shows none of its processes).
func closeAll(sessions []*loginsession.Session) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, s := range sessions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.Close()
		}()
	}
	wg.Wait()
}

func total(m map[netip.Addr]int) int {
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}
