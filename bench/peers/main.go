// Command peers times ipvirt's interceptors beside the other ways a
// connection can be given a source address, in one run, interleaved round
// by round so the machine's mood affects all of them alike:
//
//   - over loopback (ratios to plain connect): plain connect; the kernel's
//     floor (the loop itself sets IP_BIND_ADDRESS_NO_PORT and binds); a
//     force_bind-style LD_PRELOAD library (bench/connectloop/forcebind.c:
//     bind and connect, nothing else), from a fixed address and from the
//     VIP the daemon gives the library (the same source, in the pool the
//     daemon's census watches); a bare cgroup/connect4 eBPF program
//     that only calls bpf_bind (assembled here, no clang); libipvirt.so on
//     a cached answer; ipvirt's eBPF programs, enforcement off and on;
//   - UDP over loopback (ratios to plain sendto): each send from a fresh
//     unconnected socket (connectloop udploop), plain, with the
//     force_bind-style library (which binds before sendto), from both
//     addresses, and with libipvirt.so on a cached answer; each section
//     ends with libipvirt.so's ratios to the floor (issue 13's yardstick);
//   - across a veth into a second network namespace (ratios to plain
//     connect across that veth, printed too): nftables SNAT by meta skuid,
//     and ip rule uidrange with a route that names the source. These run
//     in namespaces of their own, so the host's conntrack and routing
//     rules are not touched.
//
// Every run is checked: the loop reports the source address its last
// connect left from and the listener counts where every connection (or
// datagram) came from, and a variant that did not apply its address fails
// the bench.
// Variants that need what the host lacks (root, nft) are skipped and
// named; with CI=true a skip is an error.
//
// After the rounds, libipvirt.so and the force_bind floor (TCP and UDP) run
// again as an A/B of back-to-back pairs, the yardstick of issue 13, read as
// the median of the per-pair ratios (see paired.go).
//
// With -ref PATH, another build of libipvirt.so (an earlier commit's, say)
// is timed too, TCP and UDP, interleaved with this one's: an A/B in one
// run.
//
//	sudo go run ./bench/peers [-rounds 5] [-n 20000] [-pairs 80] [-pair-n 5000] [-ref LIB]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	rounds := flag.Int("rounds", 5, "interleaved rounds (at least 5)")
	n := flag.Int("n", 20000, "connects per loop")
	pairs := flag.Int("pairs", 80, "back-to-back A/B pairs of libipvirt.so and its floor, after the rounds (0: none)")
	pairN := flag.Int("pair-n", 5000, "calls per run of a pair")
	ref := flag.String("ref", "", "another build of libipvirt.so to time beside this one's, interleaved (a path the sessions' users can read)")
	flag.Parse()
	if *rounds < 5 || *n < 1 || *pairs < 0 || *pairN < 1 {
		fmt.Fprintln(os.Stderr, "peers: -rounds must be at least 5 (a median and a minimum of fewer say little), -n and -pair-n at least 1, -pairs at least 0")
		os.Exit(2)
	}
	if *ref != "" {
		// The loops run in login sessions, elsewhere, as other users.
		abs, err := filepath.Abs(*ref)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "peers: -ref:", err)
			os.Exit(2)
		}
		*ref = abs
	}
	skipped, err := run(*rounds, *n, *pairs, *pairN, *ref)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		os.Exit(1)
	}
	if skipped > 0 && os.Getenv("CI") == "true" {
		fmt.Fprintf(os.Stderr, "peers: CI=true: %d variant(s) skipped, see above\n", skipped)
		os.Exit(1)
	}
}
