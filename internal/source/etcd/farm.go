package etcd

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// FarmLease is one VIP in use anywhere in the farm.
type FarmLease struct {
	Addr netip.Addr
	Record
	// Bad says why the key's value could not be read (another program
	// wrote under the prefix): the address counts as taken all the same.
	Bad string
}

// Farm lists every VIP of the farm, by address.
func (s *Source) Farm(ctx context.Context) ([]FarmLease, error) {
	resp, err := hedge(s, ctx, func(c context.Context, cli *clientv3.Client) (*clientv3.GetResponse, error) {
		return cli.Get(c, s.cfg.Prefix+"vips/", clientv3.WithPrefix())
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: list the farm's VIPs: %w", err)
	}
	out := make([]FarmLease, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		a, ok := keyAddr(s.cfg.Prefix, string(kv.Key))
		if !ok {
			continue
		}
		fl := FarmLease{Addr: a}
		if r, err := parseRecord(kv.Value); err != nil {
			fl.Bad = err.Error()
		} else {
			fl.Record = r
		}
		out = append(out, fl)
	}
	slices.SortFunc(out, func(a, b FarmLease) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}
