package main

import (
	"fmt"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
)

// report prints every variant's median and minimum ns/op over the rounds
// and both as ratios to its section's plain connect, then what was
// skipped.
func (b *bench) report(rounds int) {
	fmt.Printf("connect() and sendto() from a chosen source address: %d rounds × %d calls, variants interleaved\n", rounds, b.n)
	fmt.Printf("  %-44s %12s %10s %8s %8s  %s\n", "", "median ns/op", "min ns/op", "ratio", "ratio", "source")
	fmt.Printf("  %-44s %12s %10s %8s %8s\n", "", "", "", "median", "min")
	var lbase *variant
	for _, sec := range []section{loopback, udp, veth} {
		var base *variant
		for _, v := range b.variants {
			if v.section == sec && (v.name == plainName || v.name == udpPlain || v.name == vethPlain) {
				base = v
			}
		}
		if base == nil {
			continue
		}
		switch sec {
		case loopback:
			lbase = base
			fmt.Println("  over loopback, to 127.0.0.1 (ratios to plain connect over loopback):")
		case udp:
			fmt.Println("  UDP over loopback, to 127.0.0.1, each send from a fresh unconnected socket (ratios to plain sendto):")
		case veth:
			fmt.Printf("  across a veth into another namespace, as uid %d (ratios to plain connect across the veth):\n", vethUID)
		}
		bm, bmin := benchkit.Median(base.samples), benchkit.Min(base.samples)
		for _, v := range b.variants {
			if v.section != sec {
				continue
			}
			m, mn := benchkit.Median(v.samples), benchkit.Min(v.samples)
			src := v.client.String()
			if v.server.IsValid() {
				src = fmt.Sprintf("%s, seen by the server as %s", v.client, v.server)
			}
			fmt.Printf("    %-42s %12.0f %10.0f %8.3f %8.3f  %s\n", v.name, m, mn, m/bm, mn/bmin, src)
		}
		// The yardstick: the library against the floor that
		// only binds, in the same run.
		for _, q := range []struct{ label, lib, floor string }{
			{"libipvirt.so ÷ force_bind floor", libName, forceName},
			{"libipvirt.so ÷ the floor from its VIP", libName, forceVIP},
			{"-ref build ÷ force_bind floor", refName, forceName},
			{"-ref build ÷ the floor from its VIP", refName, forceVIP},
			{"libipvirt.so ÷ force_bind floor", udpLib, udpForce},
			{"libipvirt.so ÷ the floor from its VIP", udpLib, udpForceVIP},
			{"-ref build ÷ force_bind floor", udpRef, udpForce},
			{"-ref build ÷ the floor from its VIP", udpRef, udpForceVIP},
		} {
			lib, floor := b.find(sec, q.lib), b.find(sec, q.floor)
			if lib == nil || floor == nil {
				continue
			}
			fmt.Printf("    %-42s %12.3f %10.3f  (ratio of medians, of minima)\n", q.label,
				benchkit.Median(lib.samples)/benchkit.Median(floor.samples), benchkit.Min(lib.samples)/benchkit.Min(floor.samples))
		}
		if sec == veth && lbase != nil {
			fmt.Printf("    (the veth baseline is %.3f × plain connect over loopback, medians)\n", bm/benchkit.Median(lbase.samples))
		}
	}
	if len(b.skips) == 0 {
		fmt.Println("  skipped: nothing")
		return
	}
	fmt.Println("  skipped:")
	for _, s := range b.skips {
		fmt.Println("    " + s)
	}
}

// find is the variant of section sec named name, or nil.
func (b *bench) find(sec section, name string) *variant {
	for _, v := range b.variants {
		if v.section == sec && v.name == name {
			return v
		}
	}
	return nil
}
