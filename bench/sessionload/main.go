// Command sessionload is the realistic load run: many real login sessions,
// each running one process that makes a number of connects with random
// (exponential) think time between them, with no interceptor, with
// libipvirt.so against a real ipvirtd, and with ipvirtd's eBPF interceptor
// (interceptor: bpf). It prints the connect latency p50/p99/p999 of each
// (every connect of every session, the first calls included), the first
// calls alone, and ipvirtd's CPU time per 1,000 first calls.
//
// Sessions log on in waves; each round runs one wave of every variant, in
// an order that rotates, so that the machine's mood affects all alike. The
// sessions of a variant live in a cgroup of their own, and each daemon is
// scoped to its variant's cgroup, so neither sees the other's sessions nor
// any other login on the host. Needs root (audit sessions, eBPF).
//
//	sudo go run ./bench/sessionload [-sessions 2000] [-connects 100] [-think 10ms] [-wave 100]
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	var o options
	flag.IntVar(&o.sessions, "sessions", 2000, "login sessions per variant")
	flag.IntVar(&o.connects, "connects", 100, "connects per session")
	flag.DurationVar(&o.think, "think", 10*time.Millisecond, "mean think time before each connect (exponential)")
	flag.IntVar(&o.wave, "wave", 100, "sessions per wave (fewer when that would leave under 5 rounds)")
	flag.Int64Var(&o.seed, "seed", 1, "think times: session i of every variant draws from seed+i")
	flag.Parse()
	if o.sessions < 5 || o.connects < 1 || o.wave < 1 || o.think < 0 {
		fmt.Fprintln(os.Stderr, "sessionload: want -sessions >= 5 (five rounds), -connects >= 1, -wave >= 1, -think >= 0")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Println("sessionload: skipped: needs root (audit sessions, cgroups, eBPF)")
		if os.Getenv("CI") == "true" {
			os.Exit(1)
		}
		return
	}
	start := time.Now()
	err := run(o)
	fmt.Printf("duration: %s (logons and logoffs included)\n", time.Since(start).Round(time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sessionload:", err)
		os.Exit(1)
	}
}
