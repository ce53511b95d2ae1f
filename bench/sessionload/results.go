package main

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
)

// parseThink reads connectloop's think output: "think N", then N lines
// "NS SOURCE".
func parseThink(text string) ([]float64, []netip.Addr, error) {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	var n int
	if _, err := fmt.Sscanf(lines[0], "think %d", &n); err != nil || n != len(lines)-1 || n == 0 {
		return nil, nil, fmt.Errorf("connectloop wrote %q", firstLine(text))
	}
	lat := make([]float64, n)
	srcs := make([]netip.Addr, n)
	for i, line := range lines[1:] {
		ns, src, ok := strings.Cut(line, " ")
		v, err := strconv.ParseFloat(ns, 64)
		a, aerr := netip.ParseAddr(src)
		if !ok || err != nil || aerr != nil {
			return nil, nil, fmt.Errorf("connectloop wrote %q", line)
		}
		lat[i], srcs[i] = v, a
	}
	return lat, srcs, nil
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

// cpuTime is pid's user plus system CPU time, all threads, from
// /proc/PID/stat (clock ticks of 10 ms: USER_HZ is 100 on Linux).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("daemon CPU time: %w", err)
	}
	// Fields after the command (which may hold spaces) in parentheses:
	// state is the 3rd field of stat, utime the 14th, stime the 15th.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("daemon CPU time: short /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("daemon CPU time: /proc/%d/stat: %q %q", pid, f[11], f[12])
	}
	return time.Duration(u+s) * 10 * time.Millisecond, nil
}

func (l *load) report(vs []*variant) {
	o := l.o
	fmt.Printf("sessionload: %d audit sessions per variant, one process each making %d connects after exponential think times (mean %s);\n",
		o.sessions, o.connects, o.think)
	fmt.Printf("  waves of %d logons, each round one wave of every variant in rotating order (%d rounds)\n", o.wave, (o.sessions+o.wave-1)/o.wave)
	fmt.Println("connect() latency over every connect of every session (a session's first includes libipvirt.so's call to ipvirtd):")
	fmt.Printf("  %-26s %9s %9s %9s %9s %9s %10s %10s\n", "", "connects", "p50 µs", "p99 µs", "p999 µs", "max µs", "from VIP", "from MIP")
	for _, v := range vs {
		fmt.Printf("  %-26s %s %10d %10d\n", v.name, quantiles(v.lat), v.fromVIP, v.fromMIP)
	}
	fmt.Println("each session's first connect alone:")
	fmt.Printf("  %-26s %9s %9s %9s %9s %9s\n", "", "sessions", "p50 µs", "p99 µs", "p999 µs", "max µs")
	for _, v := range vs {
		fmt.Printf("  %-26s %s\n", v.name, quantiles(v.first))
	}
	for _, v := range vs {
		if v.fellBack > 0 {
			fmt.Printf("  %s: %d sessions (%d connects) used the machine IP because libipvirt.so could not ask ipvirtd; the first said: %s\n",
				v.name, v.fellBack, v.fromMIP, v.fallbackWhy)
		}
		if len(v.waits) > 0 {
			w := make([]float64, len(v.waits))
			for i, d := range v.waits {
				w[i] = float64(d)
			}
			fmt.Printf("  %s: loops started once every session of the wave held its VIP: wait after the last logon median %s, max %s (%s)\n",
				v.name, time.Duration(benchkit.Median(w)).Round(time.Millisecond), time.Duration(slices.Max(w)).Round(time.Millisecond), v.note)
		}
	}
	for _, v := range vs {
		if v.daemon != l.preloadd {
			continue
		}
		per := time.Duration(float64(v.cpu) / float64(v.sessions) * 1000)
		fmt.Printf("ipvirtd (preload) CPU time, utime+stime: %s during its variant's waves, %d first calls: %s per 1,000 first calls\n",
			v.cpu, v.sessions, per.Round(time.Millisecond))
	}
	for _, v := range vs {
		if v.daemon != l.preloadd {
			fmt.Printf("  the same daemon during the %s waves (no calls to it: its scans, and releasing the sessions of earlier waves): %s\n", v.name, v.cpu)
		}
	}
}

// quantiles formats the count, p50, p99, p999 and maximum of ns in µs.
func quantiles(ns []float64) string {
	s := slices.Clone(ns)
	slices.Sort(s)
	return fmt.Sprintf("%9d %9.1f %9.1f %9.1f %9.1f", len(s),
		benchkit.Pct(s, 0.5)/1e3, benchkit.Pct(s, 0.99)/1e3, benchkit.Pct(s, 0.999)/1e3, s[len(s)-1]/1e3)
}
