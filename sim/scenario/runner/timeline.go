package runner

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/sim/scenario"
	"github.com/ipvirt/ipvirt/sim/scenario/check"
)

// phaseRun is one phase in progress: its clock, the clients that reported,
// and the VIPs ipvirtctl reported for sessions along the way (a session
// that logs off mid-phase is gone from the final report).
type phaseRun struct {
	r     *fileRun
	p     *scenario.Phase
	paths map[string]string
	start time.Time

	// ran is closed for each session group once its clients have all
	// run (or it failed): a logoff waits for it (see step).
	ran map[string]chan struct{}

	mu           sync.Mutex
	clients      []*check.ClientResult
	vips         map[string]check.SessionRow // by session key
	notes        []string
	stepOutcomes []check.Outcome
}

// timeline runs the phase: session groups in file order (a group with `at`
// waits for its time, in parallel with the rest) while the steps run in
// their own order; then it waits out the phase's duration.
func (ph *phaseRun) timeline(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(ph.p.Sessions)+1)
	fail := func(err error) {
		if err != nil {
			errc <- err
			cancel()
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for gi := range ph.p.Sessions {
			g := &ph.p.Sessions[gi]
			if g.At == nil {
				if err := ph.group(ctx, gi); err != nil {
					fail(err)
					return
				}
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ph.sleepUntil(ctx, time.Duration(*g.At)) != nil {
					return
				}
				fail(ph.group(ctx, gi))
			}()
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range ph.p.Steps {
			s := &ph.p.Steps[i]
			if ph.sleepUntil(ctx, time.Duration(s.At)) != nil {
				return
			}
			ph.r.opts.Log.Debug("step", "at", time.Duration(s.At), "do", s.Do, "target", s.Target)
			err := ph.r.step(ctx, ph, s)
			what := fmt.Sprintf("step at %v: %s %s", time.Duration(s.At), s.Do, s.Target)
			o := check.Outcome{OK: err == nil, What: what}
			if err != nil {
				o.Got = err.Error()
			}
			ph.mu.Lock()
			ph.stepOutcomes = append(ph.stepOutcomes, o)
			ph.mu.Unlock()
		}
	}()
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	if err := ph.sleepUntil(ctx, time.Duration(ph.p.Duration)); err != nil {
		return err
	}
	return ctx.Err()
}

func (ph *phaseRun) sleepUntil(ctx context.Context, at time.Duration) error {
	d := time.Until(ph.start.Add(at))
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// group starts a group's sessions and runs its clients in each, one
// session after the other, or all at once when the group says together.
func (ph *phaseRun) group(ctx context.Context, gi int) error {
	g := &ph.p.Sessions[gi]
	defer close(ph.ran[g.Name])
	// one returns the session's key.
	one := func(i int) (string, error) {
		s, err := ph.r.startSession(ctx, ph.p, gi, i)
		if err != nil {
			return "", err
		}
		if ph.p.Interceptor == "bpf" && s.sess != nil && !g.Admin {
			// The kernel path never asks the daemon: the VIP must be in its
			// map before the first connect. ipvirtd finds new sessions by
			// watching (or scanning) and allocates ahead; wait for that, as
			// a login does in practice (README: the allocation window).
			ph.r.waitAllocated(ctx, s.key, 5*time.Second)
		}
		for k := range g.Run {
			c, err := ph.r.runClient(ctx, ph, s, &g.Run[k])
			if err != nil {
				return "", err
			}
			ph.mu.Lock()
			ph.clients = append(ph.clients, c)
			ph.mu.Unlock()
			ph.r.opts.Metrics.observe(ph.p.Interceptor, c)
		}
		return s.key, nil
	}
	if !g.Together {
		for i := 0; i < g.Count; i++ {
			if _, err := one(i); err != nil {
				return err
			}
		}
	} else {
		began := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, g.Count)
		keys := make([]string, g.Count)
		for i := 0; i < g.Count; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); keys[i], errs[i] = one(i) }()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		// Each client's connect waits for its session's VIP, so this is the
		// time from the storm's first logon to the last lease in use.
		note := fmt.Sprintf("%s: %d sessions logged on together; every client had its answer %v after the first logon",
			g.Name, g.Count, time.Since(began).Round(time.Millisecond))
		if last, n := lastGrant(ph.r, keys); n > 0 {
			note += fmt.Sprintf("; the last of %d leases was granted %v after it", n, last.Sub(began).Round(time.Millisecond))
		}
		ph.mu.Lock()
		ph.notes = append(ph.notes, note)
		ph.mu.Unlock()
	}
	// Remember what ipvirtctl says of these sessions now: a later logoff
	// removes them from the final report.
	if rep, _, err := ph.r.sessionsReport(); err == nil {
		ph.remember(rep)
	}
	return nil
}

func (ph *phaseRun) remember(rep report) {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	for _, row := range rep {
		// A session that lost its lease later (expiry) is judged by the VIP
		// it had when its clients ran.
		if old, ok := ph.vips[row.Session]; ok && old.VIP != "" && row.VIP == "" {
			continue
		}
		ph.vips[row.Session] = row
	}
}

func (ph *phaseRun) vipOf(c *check.ClientResult) (a netip.Addr) {
	ph.mu.Lock()
	row, ok := ph.vips[c.Key]
	ph.mu.Unlock()
	if !ok {
		return a
	}
	return report{row}.vipOf(c)
}

// step does one timed thing to the system.
func (r *fileRun) step(ctx context.Context, ph *phaseRun, s *scenario.Step) error {
	if r.farmTopo() != nil {
		if handled, err := r.farmStep(ctx, s); handled {
			return err
		}
	}
	switch s.Do {
	case "kill-daemon":
		if err := r.daemon.Signal(syscall.SIGKILL); err != nil {
			return err
		}
		r.daemon.Stop(syscall.SIGKILL) // reap it
		return nil
	case "stop-daemon":
		r.daemon.Stop(syscall.SIGTERM)
		return nil
	case "start-daemon":
		return r.startDaemon(ctx)
	case "restart-daemon", "reload-daemon":
		body, err := marshalConfig(merge(merge(map[string]any{}, r.cfg), s.Daemon))
		if err != nil {
			return err
		}
		if s.Do == "reload-daemon" {
			return r.reload(ctx, body)
		}
		r.daemon.Stop(syscall.SIGTERM)
		if err := r.daemon.WriteConfig(body); err != nil {
			return err
		}
		return r.startDaemon(ctx)
	case "dhcp-offline", "dhcp-online":
		p := r.dhcpByName(s.Target)
		sig := syscall.SIGSTOP
		if s.Do == "dhcp-online" {
			sig = syscall.SIGCONT
		}
		return p.cmd.Process.Signal(sig)
	case "logoff":
		// The users log off once their programs have run: on a loaded
		// host a client's connect (a DHCP exchange, its ARP probe) may
		// take longer than the step's time, and a logoff that killed it
		// would test the host's speed, not ipvirt.
		if ran, ok := ph.ran[s.Target]; ok {
			select {
			case <-ran:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		r.mu.Lock()
		var keep, gone []*liveSession
		for _, l := range r.live {
			if l.group.Name == s.Target {
				gone = append(gone, l)
			} else {
				keep = append(keep, l)
			}
		}
		r.live = keep
		r.mu.Unlock()
		closeSessions(gone)
		return nil
	case "wait-metric":
		timeout := time.Duration(s.Timeout)
		if timeout == 0 {
			timeout = 30 * time.Second
		}
		deadline := time.Now().Add(timeout)
		var last check.Outcome
		for {
			last = s.Metric.Read(r.daemon)
			if last.OK {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("after %v: %s (got %s)", timeout, last.What, last.Got)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	case "sleep":
		return nil
	}
	return fmt.Errorf("unknown step %q", s.Do)
}

// lastGrant is the latest grant time `ipvirtctl sessions` reports for the
// sessions with the given keys, and how many of them hold a lease.
func lastGrant(r *fileRun, keys []string) (last time.Time, n int) {
	rep, _, err := r.sessionsReport()
	if err != nil {
		return last, 0
	}
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	for _, row := range rep {
		if want[row.Session] && row.VIP != "" && !row.Since.IsZero() {
			n++
			if row.Since.After(last) {
				last = row.Since
			}
		}
	}
	return last, n
}
