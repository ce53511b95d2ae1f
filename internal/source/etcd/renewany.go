package etcd

import (
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// renewAny renews lease id through every endpoint at once and returns the
// first renewal a quorum confirmed (quorumAfter).
//
// Why every endpoint: the client balances requests over its endpoints
// round-robin, and a member that hangs (frozen, overloaded, half-cut) keeps
// its connection open, so a renewal sent to it waits out the whole request
// deadline, and the confirming read may land there too. With the leader
// frozen, hosts of a cluster that still had its quorum missed enough
// renewals in a row to fence themselves (TestMemberDown). A renewal is
// three small requests every lease_ttl/3; fencing a host that did not have
// to costs every session its VIP.
func (s *Source) renewAny(main *clientv3.Client, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	var clis []*clientv3.Client
	for _, cli := range s.endpointClients() {
		if cli != nil {
			clis = append(clis, cli)
		}
	}
	if len(clis) < 2 {
		clis = []*clientv3.Client{main}
	}
	type answer struct {
		resp *clientv3.LeaseKeepAliveResponse
		err  error
	}
	ch := make(chan answer, len(clis))
	for _, cli := range clis {
		go func() {
			c, cancel := s.call(nil)
			resp, err := cli.KeepAliveOnce(c, id)
			cancel()
			if err == nil && resp.TTL > 0 && !s.quorumAfter(cli, resp) {
				err = errors.New("etcd: renewal not confirmed by a quorum")
			}
			ch <- answer{resp, err}
		}()
	}
	var last error
	for range clis {
		a := <-ch
		switch {
		case a.err == nil:
			return a.resp, nil // TTL 0 included: the lease is gone
		case errors.Is(a.err, rpctypes.ErrLeaseNotFound):
			return nil, a.err
		}
		last = a.err
	}
	return nil, last
}
