package daemon

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
)

// Farm implements server.Backend: every VIP of the etcd farm, as the
// cluster has them now.
func (d *Daemon) Farm(ctx context.Context) ([]api.FarmLease, error) {
	src, ok := d.src.(*etcd.Source)
	if !ok {
		return nil, fmt.Errorf("this host's source is %s: only source: etcd shares a pool with a farm", d.src.Name())
	}
	list, err := src.Farm(ctx)
	if err != nil {
		return nil, err
	}
	id, _ := d.hostID()
	me := hex.EncodeToString(id)
	out := make([]api.FarmLease, 0, len(list))
	for _, l := range list {
		out = append(out, api.FarmLease{VIP: l.Addr.String(), Host: l.Host, HostID: l.HostID, Holder: l.Holder,
			UID: l.UID, Since: l.Since, Mine: l.HostID == me, Bad: l.Bad})
	}
	return out, nil
}
