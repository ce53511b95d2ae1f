// Command bpfconnect measures what the kernel interceptor adds to
// connect(): the same C loop (bench/connectloop) with nothing attached, with
// libipvirt.so on a cached answer, and with the cgroup eBPF programs
// attached and the session in their map, interleaved round by round in one
// run. Needs root (eBPF, audit sessions).
//
//	sudo go run ./bench/bpfconnect [-rounds 5] [-n 20000]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
	"github.com/ipvirt/ipvirt/lsp/bpf"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

func main() {
	rounds := flag.Int("rounds", 5, "interleaved rounds")
	n := flag.Int("n", 20000, "connects per loop")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Println("bpfconnect: skipped: needs root (eBPF programs, audit sessions)")
		return
	}
	if err := run(*rounds, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bpfconnect:", err)
		os.Exit(1)
	}
}

func run(rounds, n int) error {
	work, err := os.MkdirTemp("", "ipvirt-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	os.Chmod(work, 0o755)
	tools, err := benchkit.Build(work)
	if err != nil {
		return err
	}
	loop, lib := tools.Loop, tools.Lib

	ddir := filepath.Join(work, "d")
	if err := os.Mkdir(ddir, 0o755); err != nil {
		return err
	}
	d, err := daemonproc.New(ddir, "adapter: lo\nsource: static\nadmins: {users: [], groups: []}\n"+
		"static_pool: {start: 127.76.0.10, end: 127.76.0.250, subnet_mask: 255.255.255.0}\n", false)
	if err != nil {
		return err
	}
	if err := d.Start(context.Background()); err != nil {
		return err
	}
	defer d.Stop(syscall.SIGTERM)

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
	sess, err := loginsession.Start(context.Background(), loginsession.Audit, 60901)
	if err != nil {
		return err
	}
	defer sess.Close()
	pre := []string{"LD_PRELOAD=" + lib, "IPVIRT_SOCKET=" + d.Socket}
	bpfVIP := netip.MustParseAddr("127.72.0.10")
	pin := fmt.Sprintf("/sys/fs/bpf/ipvirt-bench-%d", os.Getpid())

	var base, cached, kern []float64
	for r := 0; r < rounds; r++ {
		b, src, err := inSession(sess, work, nil, loop, "loop", strconv.Itoa(n), "127.0.0.1", port)
		if err != nil {
			return err
		}
		if src != "127.0.0.1" {
			return fmt.Errorf("baseline left from %s", src)
		}
		c, src, err := inSession(sess, work, pre, loop, "loop", strconv.Itoa(n), "127.0.0.1", port)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(src, "127.76.0.") {
			return fmt.Errorf("with libipvirt.so the loop left from %s, not a VIP", src)
		}
		ic, err := bpf.Open(bpf.Options{PinDir: pin, MachineIP: netip.MustParseAddr("127.0.0.1")})
		if err != nil {
			return err
		}
		if err := ic.SetSession(sess.ID, bpfVIP); err != nil {
			ic.Close()
			return err
		}
		k, src, err := inSession(sess, work, nil, loop, "loop", strconv.Itoa(n), "127.0.0.1", port)
		ic.Close()
		if err != nil {
			return err
		}
		if src != bpfVIP.String() {
			return fmt.Errorf("with the eBPF programs the loop left from %s, want %s", src, bpfVIP)
		}
		base, cached, kern = append(base, b[0]), append(cached, c[0]), append(kern, k[0])
		fmt.Fprintf(os.Stderr, "round %d/%d: baseline %.0f ns, preload %.0f ns, eBPF %.0f ns\n", r+1, rounds, b[0], c[0], k[0])
	}
	mb, mc, mk := median(base), median(cached), median(kern)
	fmt.Printf("connect() over loopback in an audit session, %d rounds × %d connects (medians)\n", rounds, n)
	fmt.Printf("  %-36s %10s %8s\n", "", "ns/op", "ratio")
	fmt.Printf("  %-36s %10.0f %8.3f\n", "nothing attached (baseline)", mb, 1.0)
	fmt.Printf("  %-36s %10.0f %8.3f   target <= 1.05\n", "eBPF connect4 + bpf_bind", mk, mk/mb)
	fmt.Printf("  %-36s %10.0f %8.3f\n", "libipvirt.so, cached answer", mc, mc/mb)
	return nil
}

func inSession(s *loginsession.Session, work string, env []string, prog string, args ...string) ([]float64, string, error) {
	out := filepath.Join(work, fmt.Sprintf("out-%d", time.Now().UnixNano()))
	pid, err := s.RunEnv(env, prog, append(args, out)...)
	if err != nil {
		return nil, "", err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if b, err := os.ReadFile(out); err == nil {
			s.Reap(pid)
			f := strings.Fields(string(b))
			if len(f) < 3 {
				return nil, "", fmt.Errorf("connectloop said %q", b)
			}
			v, err := strconv.ParseFloat(f[1], 64)
			return []float64{v}, f[2], err
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH || time.Now().After(deadline) {
			return nil, "", fmt.Errorf("%s %v gave no result", prog, args)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
