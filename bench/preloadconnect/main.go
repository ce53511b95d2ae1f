// Command preloadconnect measures what libipvirt.so adds to connect():
// the same C loop (bench/connectloop) with no interceptor and with the
// library on a cached answer, interleaved round by round in one run so that
// the machine's mood affects both alike; and each fresh process's first
// call (one round trip to a real ipvirtd), timed against no interceptor and
// against bench/connectloop/noopd, a C server that sends the same answer
// without looking at the caller: the floor any daemon round trip has on this
// machine (process wake-ups, mostly across CPUs), beside which ipvirtd's own
// share (identifying the caller, the Go runtime) can be read. The first-call
// variants take turns process by process (connectloop firsts), so that no
// variant runs warm behind its own previous call: a real first call comes
// after other work, not after another first call. -ref DIR adds a second
// ipvirtd, DIR/ipvirtd of another build (go build -o DIR/ ./cmd/ipvirtd in
// a checkout of it), whose first calls take turns with the others, for a
// change's effect on the daemon's share.
//
// On a VM whose idle virtual CPUs halt (cat
// /sys/module/haltpoll/parameters/guest_halt_poll_ns: 0), waking a thread
// on the other, idle CPU takes 25-50 µs, and whatever keeps that CPU awake
// changes every figure here: the Go runtime's own threads do at times for
// ipvirtd, a one-thread C server never does. Read the share over several
// runs.
//
//	go run ./bench/preloadconnect [-rounds 5] [-n 20000] [-first 2000] [-ref DIR]
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

func main() {
	rounds := flag.Int("rounds", 5, "interleaved rounds")
	n := flag.Int("n", 20000, "connects per loop")
	first := flag.Int("first", 2000, "fresh processes timed per round and variant for the first call")
	ref := flag.String("ref", "", "directory of another build's ipvirtd, timed beside this one's")
	flag.Parse()
	if err := run(*rounds, *n, *first, *ref); err != nil {
		fmt.Fprintln(os.Stderr, "preloadconnect:", err)
		os.Exit(1)
	}
}

func run(rounds, n, first int, refDir string) error {
	work, err := os.MkdirTemp("", "ipvirt-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	os.Chmod(work, 0o755)
	loop, noopd, lib, err := build(work)
	if err != nil {
		return err
	}

	kind, identity := loginsession.POSIX, "posix"
	if ok, _ := loginsession.Available(loginsession.Audit); ok {
		kind, identity = loginsession.Audit, "audit"
	}
	d, err := startDaemon(work, "d", identity, "127.76.0", "")
	if err != nil {
		return err
	}
	defer d.Stop(syscall.SIGTERM)
	var ref *daemonproc.Daemon
	if refDir != "" {
		// Its own pool, so that the two never hand out one address.
		if ref, err = startDaemon(work, "ref", identity, "127.77.0", filepath.Join(refDir, "ipvirtd")); err != nil {
			return err
		}
		defer ref.Stop(syscall.SIGTERM)
	}

	// The peer accepts and closes: the loop measures connect, not a server.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	sess, err := loginsession.Start(context.Background(), kind, 60900)
	if err != nil {
		return err
	}
	defer sess.Close()
	pre := []string{"LD_PRELOAD=" + lib, "IPVIRT_SOCKET=" + d.Socket}
	var refPre []string
	if ref != nil {
		refPre = []string{"LD_PRELOAD=" + lib, "IPVIRT_SOCKET=" + ref.Socket}
		if _, src, err := inSession(sess, work, refPre, loop, "loop", "1", "127.0.0.1", port); err != nil || !strings.HasPrefix(src, "127.77.0.") {
			return fmt.Errorf("against the -ref ipvirtd the loop left from %q (%v), not one of its VIPs", src, err)
		}
	}

	var base, cached []float64
	var firsts, refFirsts, plainFirsts, floorFirsts []float64
	var vip string
	var floorPre []string
	for r := 0; r < rounds; r++ {
		b, src, err := inSession(sess, work, nil, loop, "loop", strconv.Itoa(n), "127.0.0.1", port)
		if err != nil {
			return err
		}
		if src != "127.0.0.1" {
			return fmt.Errorf("baseline left from %s, want 127.0.0.1", src)
		}
		c, src, err := inSession(sess, work, pre, loop, "loop", strconv.Itoa(n), "127.0.0.1", port)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(src, "127.76.0.") {
			return fmt.Errorf("with libipvirt.so the loop left from %s, not a VIP: the interceptor is not on the path", src)
		}
		vip = src
		base, cached = append(base, b[0]), append(cached, c[0])
		if floorPre == nil {
			sock, stop, err := startNoop(work, noopd, vip)
			if err != nil {
				return err
			}
			defer stop()
			floorPre = []string{"LD_PRELOAD=" + lib, "IPVIRT_SOCKET=" + sock}
			if _, src, err := inSession(sess, work, floorPre, loop, "loop", "1", "127.0.0.1", port); err != nil || src != vip {
				return fmt.Errorf("against the no-op server the loop left from %q (%v), want %s", src, err, vip)
			}
		}
		// Every first-call variant in one interleaved run: fresh processes
		// take turns (connectloop firsts), so that the machine's every
		// moment falls on all of them alike, not on one variant's batch.
		socks := []string{"-", floorPre[1][len("IPVIRT_SOCKET="):], d.Socket}
		tos := []*[]float64{&plainFirsts, &floorFirsts, &firsts}
		if ref != nil {
			socks, tos = append(socks, ref.Socket), append(tos, &refFirsts)
		}
		got, err := firstsInSession(sess, work, loop, first, port, lib, socks)
		if err != nil {
			return err
		}
		for v, to := range tos {
			*to = append(*to, got[v]...)
		}
		fmt.Fprintf(os.Stderr, "round %d/%d: baseline %.0f ns, cached %.0f ns\n", r+1, rounds, b[0], c[0])
	}
	mb, mc := median(base), median(cached)
	fmt.Printf("connect() over loopback, %s sessions, %d rounds × %d connects (medians; VIP %s)\n", kind, rounds, n, vip)
	fmt.Printf("  %-34s %10s %8s\n", "", "ns/op", "ratio")
	fmt.Printf("  %-34s %10.0f %8.3f\n", "no interceptor (baseline)", mb, 1.0)
	fmt.Printf("  %-34s %10.0f %8.3f   target <= 1.10\n", "libipvirt.so, cached answer", mc, mc/mb)
	slices.Sort(firsts)
	slices.Sort(plainFirsts)
	slices.Sort(floorFirsts)
	slices.Sort(refFirsts)
	fmt.Printf("  first connect of a fresh process (%d samples each):\n", len(firsts))
	row := func(name string, v []float64) {
		fmt.Printf("    %-40s median %6.1f µs  p99 %6.1f µs\n", name, pct(v, 0.5)/1e3, pct(v, 0.99)/1e3)
	}
	row("no interceptor", plainFirsts)
	row("libipvirt.so, no-op C server (floor)", floorFirsts)
	row("libipvirt.so, ipvirtd", firsts)
	if ref != nil {
		row("libipvirt.so, -ref ipvirtd", refFirsts)
	}
	added := func(v []float64, q float64) float64 { return (pct(v, q) - pct(plainFirsts, q)) / 1e3 }
	fmt.Printf("    added by the first call: median %.1f µs (target <= 30), p99 %.1f µs (target <= 100)\n", added(firsts, 0.5), added(firsts, 0.99))
	fmt.Printf("    the floor, a no-op server, adds: median %.1f µs, p99 %.1f µs\n", added(floorFirsts, 0.5), added(floorFirsts, 0.99))
	share := func(v []float64, q float64) float64 { return (pct(v, q) - pct(floorFirsts, q)) / 1e3 }
	fmt.Printf("    ipvirtd's own share (less the floor): median %.1f µs (target <= 10), p99 %.1f µs (target <= 50)\n", share(firsts, 0.5), share(firsts, 0.99))
	if ref != nil {
		fmt.Printf("    the -ref ipvirtd's share: median %.1f µs, p99 %.1f µs (%s)\n", share(refFirsts, 0.5), share(refFirsts, 0.99), refDir)
	}
	return nil
}

// startDaemon starts an ipvirtd (bin, or this build's when empty) in
// work/name, giving VIPs from net.10-250.
func startDaemon(work, name, identity, net, bin string) (*daemonproc.Daemon, error) {
	if err := os.Mkdir(filepath.Join(work, name), 0o755); err != nil {
		return nil, err
	}
	d, err := daemonproc.New(filepath.Join(work, name), fmt.Sprintf(
		"adapter: lo\nsource: static\nsession_identity: %s\nadmins: {users: [], groups: []}\n"+
			"static_pool: {start: %s.10, end: %s.250, subnet_mask: 255.255.255.0}\n", identity, net, net), false)
	if err != nil {
		return nil, err
	}
	d.Bin = bin
	if err := d.Start(context.Background()); err != nil {
		return nil, err
	}
	return d, nil
}

// startNoop runs bench/connectloop/noopd answering every QUERY as ipvirtd
// answers the benchmark's session: the same VIP, so the client's work after
// the reply is the same.
func startNoop(work, noopd, vip string) (sock string, stop func(), err error) {
	addr, err := netip.ParseAddr(vip)
	if err != nil {
		return "", nil, fmt.Errorf("VIP %q: %w", vip, err)
	}
	reply := wire.AppendFrame(nil, wire.RespAnswer, wire.AppendAnswer(nil, wire.Answer{
		Kind: wire.KindVIP, Prefix: 24, VIP: addr, MachineIP: netip.MustParseAddr("127.0.0.1"),
		TTL: 3600, Session: wire.NoSession}))
	sock = filepath.Join(work, "noopd.sock")
	cmd := exec.Command(noopd, sock, hex.EncodeToString(reply))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start noopd: %w", err)
	}
	stop = func() { cmd.Process.Kill(); cmd.Wait() }
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("noopd did not listen on %s", sock)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// firstsInSession runs connectloop firsts in the benchmark's login session:
// k fresh processes per socket ("-": no interceptor), interleaved, each
// timing its first connect; it returns each socket's times.
func firstsInSession(s *loginsession.Session, work, loop string, k int, port, lib string, socks []string) ([][]float64, error) {
	out := filepath.Join(work, fmt.Sprintf("out-%d", time.Now().UnixNano()))
	pid, err := s.RunEnv(nil, loop, append([]string{"firsts", strconv.Itoa(k), "127.0.0.1", port, out, lib}, socks...)...)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		b, err := os.ReadFile(out)
		if err == nil {
			s.Reap(pid)
			got := make([][]float64, len(socks))
			for _, w := range strings.Fields(string(b))[1:] {
				vs, ns, ok := strings.Cut(w, ":")
				v, err1 := strconv.Atoi(vs)
				t, err2 := strconv.ParseFloat(ns, 64)
				if !ok || err1 != nil || err2 != nil || v < 0 || v >= len(socks) {
					return nil, fmt.Errorf("connectloop firsts: bad sample %q", w)
				}
				got[v] = append(got[v], t)
			}
			for v := range got {
				if len(got[v]) != k {
					return nil, fmt.Errorf("connectloop firsts: %d samples for %s, want %d", len(got[v]), socks[v], k)
				}
			}
			return got, nil
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH || time.Now().After(deadline) {
			return nil, fmt.Errorf("connectloop firsts gave no result")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// inSession runs the loop in the benchmark's login session and reads its
// result line: the numbers and the source address.
func inSession(s *loginsession.Session, work string, env []string, prog string, args ...string) ([]float64, string, error) {
	out := filepath.Join(work, fmt.Sprintf("out-%d", time.Now().UnixNano()))
	pid, err := s.RunEnv(env, prog, append(args, out)...)
	if err != nil {
		return nil, "", err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		b, err := os.ReadFile(out)
		if err == nil {
			s.Reap(pid)
			f := strings.Fields(string(b))
			var nums []float64
			src := ""
			for _, w := range f[1:] {
				if v, err := strconv.ParseFloat(w, 64); err == nil {
					nums = append(nums, v)
				} else {
					src = w
				}
			}
			return nums, src, nil
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH || time.Now().After(deadline) {
			return nil, "", fmt.Errorf("%s %v gave no result", prog, args)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func build(work string) (loop, noopd, lib string, err error) {
	loop, noopd = filepath.Join(work, "connectloop"), filepath.Join(work, "noopd")
	if out, err := exec.Command("make", "-s", "-C", "bench/connectloop", "OUT="+work).CombinedOutput(); err != nil {
		return "", "", "", fmt.Errorf("build connectloop and noopd (run from the repository root): %v\n%s", err, out)
	}
	if dir := os.Getenv(daemonproc.BinEnv); dir != "" {
		if p := filepath.Join(dir, "libipvirt.so"); exists(p) {
			return loop, noopd, p, nil
		}
	}
	if out, err := exec.Command("make", "-s", "-C", "lsp/preload", "OUT="+work).CombinedOutput(); err != nil {
		return "", "", "", fmt.Errorf("build libipvirt.so: %v\n%s", err, out)
	}
	return loop, noopd, filepath.Join(work, "libipvirt.so"), nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return pct(s, 0.5)
}

// pct reads quantile q of sorted v by nearest rank: the median of 5 is
// the 3rd, the p99 of 600 the 594th.
func pct(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(v)))) - 1
	return v[max(0, min(i, len(v)-1))]
}
