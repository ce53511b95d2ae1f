package static

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ipvirt/ipvirt/internal/pool"
	"github.com/ipvirt/ipvirt/internal/source"
)

// Config is the static_pool key (the TSVIPool of Windows RD IP
// Virtualization): an inclusive address range and the subnet mask handed
// out with each address.
type Config struct {
	Start      netip.Addr `yaml:"start"`
	End        netip.Addr `yaml:"end"`
	SubnetMask netip.Addr `yaml:"subnet_mask"`
}

// Validate checks the pool's own geometry: start ≤ end, both IPv4 in one
// subnet under the mask, neither the network nor the broadcast address.
func (p Config) Validate() error {
	switch {
	case !p.Start.IsValid():
		return errors.New("static_pool.start: missing")
	case !p.End.IsValid():
		return errors.New("static_pool.end: missing")
	case !p.SubnetMask.IsValid():
		return errors.New("static_pool.subnet_mask: missing")
	case !p.Start.Is4():
		return fmt.Errorf("static_pool.start: %s is not an IPv4 address", p.Start)
	case !p.End.Is4():
		return fmt.Errorf("static_pool.end: %s is not an IPv4 address", p.End)
	}
	bits, ok := pool.MaskBits(p.SubnetMask)
	if !ok {
		return fmt.Errorf("static_pool.subnet_mask: %s is not a contiguous IPv4 mask", p.SubnetMask)
	}
	if bits > 30 {
		return fmt.Errorf("static_pool.subnet_mask: %s (/%d) leaves no room for hosts", p.SubnetMask, bits)
	}
	if p.End.Less(p.Start) {
		return fmt.Errorf("static_pool: start %s is after end %s", p.Start, p.End)
	}
	// A count from the file: the pool's index arrays are sized by it, and
	// pool.New refuses more than MaxSize only once the daemon starts (or a
	// reload applies the file), so say it here, where -check sees it.
	if n := uint64(pool.V4(p.End)) - uint64(pool.V4(p.Start)) + 1; n > pool.MaxSize {
		return fmt.Errorf("static_pool: start %s to end %s holds %d addresses, more than the %d a pool may have",
			p.Start, p.End, n, pool.MaxSize)
	}
	subnet := p.Subnet()
	if !subnet.Contains(p.End) {
		return fmt.Errorf("static_pool: start %s and end %s are not in one subnet under mask %s (%s)",
			p.Start, p.End, p.SubnetMask, subnet)
	}
	if p.Start == subnet.Addr() {
		return fmt.Errorf("static_pool.start: %s is the network address of %s", p.Start, subnet)
	}
	if bcast := pool.Broadcast(subnet); p.End == bcast {
		return fmt.Errorf("static_pool.end: %s is the broadcast address of %s", p.End, subnet)
	}
	return nil
}

// Subnet returns the pool's network: start masked by subnet_mask.
func (p Config) Subnet() netip.Prefix {
	bits, _ := pool.MaskBits(p.SubnetMask)
	pfx, _ := p.Start.Prefix(bits)
	return pfx
}

// Range returns the pool as a source.Range, for Source.Reconfigure.
func (p Config) Range() source.Range {
	return source.Range{Start: p.Start, End: p.End, Subnet: p.Subnet()}
}

// Size returns the number of addresses in the pool.
func (p Config) Size() int {
	return int(pool.V4(p.End)-pool.V4(p.Start)) + 1
}
