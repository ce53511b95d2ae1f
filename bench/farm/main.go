// Command farm measures a farm of session hosts sharing one static pool
// through etcd (source: etcd): allocations per second for three hosts
// against a three-member cluster beside the single-host bbolt path, the
// time from a host's partition to the withdrawal of all its VIPs, and the
// time from etcd's return to the host serving again and a holder getting
// its VIP back. It runs its own cluster (etcd's default fsync, data under
// TMPDIR or /var/tmp) and needs no root.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/ipvirt/ipvirt/internal/testenv"
)

func main() {
	perHost := flag.Int("holders", 64, "concurrent holders per host in the allocation run")
	runs := flag.Int("runs", 5, "partitions per lease_ttl")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: farm [--holders N] [--runs N]\n\nMeasures source: etcd for a farm of 3 hosts and prints each figure beside its baseline.\n\nOptions:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		fmt.Println("farm: skipped: etcd not installed (Debian package etcd-server)")
		if os.Getenv("CI") == "true" {
			fmt.Println("farm: CI=true: a skip is a failure")
			os.Exit(1)
		}
		return
	}
	base := os.Getenv("TMPDIR")
	if base == "" {
		// /tmp may be tmpfs; etcd's fsync is part of what is measured.
		base = "/var/tmp"
	}
	dir, err := os.MkdirTemp(base, "ipvirt-farm-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(dir)
	fmt.Printf("ipvirt farm benchmark (%d CPUs, etcd %s, 3 members, data in %s)\n\n", runtime.NumCPU(), bin, dir)

	start := time.Now()
	c, err := testenv.LaunchEtcdCluster(bin, filepath.Join(dir, "etcd"), 3)
	if c != nil {
		defer c.Close()
	}
	if err != nil {
		fatal(fmt.Errorf("start the cluster: %w", err))
	}
	if err := throughput(c.Endpoints, dir, *perHost); err != nil {
		fatal(err)
	}
	fmt.Println()
	if os.Getenv("FARM_ONLY_ALLOC") != "" {
		return
	}
	for _, ttl := range []time.Duration{3 * time.Second, 10 * time.Second} {
		if err := partitions(c.Endpoints, dir, ttl, *runs); err != nil {
			fatal(err)
		}
	}
	fmt.Printf("\ntotal %.0f s\n", time.Since(start).Seconds())
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "farm:", err)
	os.Exit(1)
}
