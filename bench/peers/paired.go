package main

import (
	"fmt"
	"os"
	"slices"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
)

// A library that adds a hundred-odd instructions to a 25 µs connect is
// within a tenth of a percent of the floor, while whole rounds drift by a
// few percent between each other: the ratios of medians over rounds cannot
// tell 1.00 from 1.03. The yardstick of issue 13 is therefore measured
// apart, as an A/B of back-to-back pairs (the two runs of a pair seconds
// apart at most, which takes out the drift), their order swapped every
// pair, and read as the median of the per-pair ratios with its
// interquartile range.

// pairing is one A/B to measure: the library against its floor.
type pairing struct {
	label      string
	sec        section
	lib, floor string
}

// The floor from the VIP binds the very address the library binds, so it
// is the closest like for like.
var pairings = []pairing{
	{"libipvirt.so ÷ force_bind floor", loopback, libName, forceName},
	{"libipvirt.so ÷ the floor from its VIP", loopback, libName, forceVIP},
	{"-ref build ÷ the floor from its VIP", loopback, refName, forceVIP},
	{"libipvirt.so ÷ force_bind floor", udp, udpLib, udpForce},
	{"libipvirt.so ÷ the floor from its VIP", udp, udpLib, udpForceVIP},
	{"-ref build ÷ the floor from its VIP", udp, udpRef, udpForceVIP},
}

// pairedResult is one pairing's per-pair ratios.
type pairedResult struct {
	pairing
	n      int
	ratios []float64
}

// runPairs measures every pairing whose variants this run has: pairs
// back-to-back runs of n calls each.
func (b *bench) runPairs(pairs, n int) error {
	for _, p := range pairings {
		lib, floor := b.find(p.sec, p.lib), b.find(p.sec, p.floor)
		if lib == nil || floor == nil {
			continue
		}
		r := pairedResult{pairing: p, n: n}
		for i := range pairs {
			first, second := lib, floor
			if i%2 == 1 {
				first, second = floor, lib
			}
			a, err := first.once(n)
			if err != nil {
				return fmt.Errorf("pair %d, %s: %w", i+1, first.name, err)
			}
			c, err := second.once(n)
			if err != nil {
				return fmt.Errorf("pair %d, %s: %w", i+1, second.name, err)
			}
			if i%2 == 1 {
				a, c = c, a
			}
			r.ratios = append(r.ratios, a/c)
		}
		b.paired = append(b.paired, r)
		fmt.Fprintf(os.Stderr, "pairs done: %s (%s)\n", p.label, sectionName(p.sec))
	}
	return nil
}

func sectionName(s section) string {
	if s == udp {
		return "UDP sendto"
	}
	return "TCP connect"
}

// reportPairs prints each pairing's median ratio and interquartile range.
func (b *bench) reportPairs() {
	if len(b.paired) == 0 {
		return
	}
	fmt.Println("  issue 13's yardstick, as an A/B of back-to-back pairs (median of the per-pair ratios, and their interquartile range):")
	for _, r := range b.paired {
		sorted := slices.Clone(r.ratios)
		slices.Sort(sorted)
		fmt.Printf("    %-42s %-12s %8.3f  (IQR %.3f-%.3f; %d pairs of %d calls)\n", r.label, sectionName(r.sec),
			benchkit.Pct(sorted, 0.5), benchkit.Pct(sorted, 0.25), benchkit.Pct(sorted, 0.75), len(r.ratios), r.n)
	}
}
