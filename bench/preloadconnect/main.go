// Command preloadconnect measures what libipvirt.so adds to connect():
// the same C loop (bench/connectloop) with no interceptor, with the library
// on a cached answer, and each fresh process's first call (one round trip
// to a real ipvirtd), interleaved round by round in one run so that the
// machine's mood affects all three alike.
//
//	go run ./bench/preloadconnect [-rounds 5] [-n 20000] [-first 200]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

func main() {
	rounds := flag.Int("rounds", 5, "interleaved rounds")
	n := flag.Int("n", 20000, "connects per loop")
	first := flag.Int("first", 200, "fresh processes timed per round for the first call")
	flag.Parse()
	if err := run(*rounds, *n, *first); err != nil {
		fmt.Fprintln(os.Stderr, "preloadconnect:", err)
		os.Exit(1)
	}
}

func run(rounds, n, first int) error {
	work, err := os.MkdirTemp("", "ipvirt-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	os.Chmod(work, 0o755)
	loop, lib, err := build(work)
	if err != nil {
		return err
	}

	kind, identity := loginsession.POSIX, "posix"
	if ok, _ := loginsession.Available(loginsession.Audit); ok {
		kind, identity = loginsession.Audit, "audit"
	}
	if err := os.Mkdir(filepath.Join(work, "d"), 0o755); err != nil {
		return err
	}
	d, err := daemonproc.New(filepath.Join(work, "d"), fmt.Sprintf(
		"adapter: lo\nsource: static\nsession_identity: %s\nadmins: {users: [], groups: []}\n"+
			"static_pool: {start: 127.76.0.10, end: 127.76.0.250, subnet_mask: 255.255.255.0}\n", identity), false)
	if err != nil {
		return err
	}
	if err := d.Start(context.Background()); err != nil {
		return err
	}
	defer d.Stop(syscall.SIGTERM)

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

	var base, cached []float64
	var firsts, plainFirsts []float64
	var vip string
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
		f, _, err := inSession(sess, work, pre, loop, "first", strconv.Itoa(first), "127.0.0.1", port)
		if err != nil {
			return err
		}
		firsts = append(firsts, f...)
		pf, _, err := inSession(sess, work, nil, loop, "first", strconv.Itoa(first), "127.0.0.1", port)
		if err != nil {
			return err
		}
		plainFirsts = append(plainFirsts, pf...)
		fmt.Fprintf(os.Stderr, "round %d/%d: baseline %.0f ns, cached %.0f ns\n", r+1, rounds, b[0], c[0])
	}
	mb, mc := median(base), median(cached)
	fmt.Printf("connect() over loopback, %s sessions, %d rounds × %d connects (medians; VIP %s)\n", kind, rounds, n, vip)
	fmt.Printf("  %-34s %10s %8s\n", "", "ns/op", "ratio")
	fmt.Printf("  %-34s %10.0f %8.3f\n", "no interceptor (baseline)", mb, 1.0)
	fmt.Printf("  %-34s %10.0f %8.3f   target <= 1.10\n", "libipvirt.so, cached answer", mc, mc/mb)
	slices.Sort(firsts)
	slices.Sort(plainFirsts)
	fmt.Printf("  first connect of a fresh process (%d samples each):\n", len(firsts))
	fmt.Printf("    %-32s median %6.1f µs  p99 %6.1f µs\n", "no interceptor", pct(plainFirsts, 0.5)/1e3, pct(plainFirsts, 0.99)/1e3)
	fmt.Printf("    %-32s median %6.1f µs  p99 %6.1f µs\n", "libipvirt.so (one ipvirtd trip)", pct(firsts, 0.5)/1e3, pct(firsts, 0.99)/1e3)
	fmt.Printf("    added by the first call: median %.1f µs (target <= 30), p99 %.1f µs (target <= 100)\n",
		(pct(firsts, 0.5)-pct(plainFirsts, 0.5))/1e3, (pct(firsts, 0.99)-pct(plainFirsts, 0.99))/1e3)
	return nil
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

func build(work string) (loop, lib string, err error) {
	loop = filepath.Join(work, "connectloop")
	if out, err := exec.Command("cc", "-O2", "-Wall", "-o", loop, "bench/connectloop/connectloop.c").CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build connectloop (run from the repository root): %v\n%s", err, out)
	}
	if dir := os.Getenv(daemonproc.BinEnv); dir != "" {
		if p := filepath.Join(dir, "libipvirt.so"); exists(p) {
			return loop, p, nil
		}
	}
	if out, err := exec.Command("make", "-s", "-C", "lsp/preload", "OUT="+work).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build libipvirt.so: %v\n%s", err, out)
	}
	return loop, filepath.Join(work, "libipvirt.so"), nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return pct(s, 0.5)
}

// pct reads quantile q of sorted v.
func pct(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	i := int(q*float64(len(v)) + 0.5)
	return v[max(0, min(i, len(v)-1))]
}
