package etcd

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// retryWait is how often a host that has no lease, or whose renewal
// failed, tries again.
const retryWait = 500 * time.Millisecond

// resume takes back the lease a previous run of the daemon kept alive (a
// restart within the TTL keeps every VIP key), or grants a new one. When
// etcd does not answer the host starts fenced and keep tries again.
func (s *Source) resume() {
	if id := s.savedLeaseID(); id != 0 {
		cli, err := s.client()
		if err != nil {
			return // fenced; keep connects and takes it back if it is alive
		}
		// A renewal not confirmed by a quorum (a leader change right
		// then) is tried again: giving up would drop every VIP kept.
		for range 3 {
			sent := time.Now()
			c, cancel := s.call(nil)
			var resp *clientv3.LeaseKeepAliveResponse
			resp, err = cli.KeepAliveOnce(c, id)
			cancel()
			if err == nil && resp.TTL > 0 && s.quorumAfter(cli, resp) {
				s.mu.Lock()
				s.leaseID, s.expires, s.fenced = id, sent.Add(time.Duration(resp.TTL)*time.Second), time.Time{}
				s.mu.Unlock()
				s.log.Info("etcd: took back this host's lease", "lease", fmt.Sprintf("%x", int64(id)), "ttl_left", resp.TTL)
				return
			}
			if err != nil && errors.Is(err, rpctypes.ErrLeaseNotFound) {
				break
			}
		}
		s.log.Info("etcd: the previous lease is gone; starting with a new one", "lease", fmt.Sprintf("%x", int64(id)), "err", err)
	}
	s.renew()
}

// keep renews the lease every TTL/3 and fences the host when the lease may
// run out at the cluster within the margin.
func (s *Source) keep() {
	defer s.wg.Done()
	next := time.Now().Add(s.cfg.LeaseTTL / 3)
	for {
		s.mu.Lock()
		serving := s.leaseID != 0 && s.fenced.IsZero()
		deadline := s.expires.Add(-s.margin)
		s.mu.Unlock()
		if r := time.Now().Add(retryWait); !serving && r.Before(next) {
			next = r
		}
		wake := next
		if serving && deadline.Before(wake) {
			wake = deadline
		}
		t := time.NewTimer(time.Until(wake))
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if serving && !time.Now().Before(deadline) {
			s.fence("no renewal within lease_ttl minus the safety margin")
		}
		if time.Now().Before(next) {
			continue
		}
		if s.renew() {
			next = time.Now().Add(s.cfg.LeaseTTL / 3)
		} else {
			next = time.Now().Add(retryWait)
		}
	}
}

// quorumAfter reports whether the leader that renewed the lease (in the
// raft term the renewal's answer names) still had a quorum after it did.
//
// etcd renews a lease on the leader alone, without consensus: a leader cut
// off from the other members keeps renewing until it steps down (an
// election timeout later), while the others may elect a new leader whose
// view of the lease never saw that renewal. Counting such a renewal would
// move this host's fencing deadline past the time the cluster may expire
// the lease. A linearizable read sent after the renewal's answer, and
// answered in the same term, proves that term's leader still led with a
// quorum then: any later leader starts the lease's TTL over from its own
// election, after the renewal.
func (s *Source) quorumAfter(cli *clientv3.Client, resp *clientv3.LeaseKeepAliveResponse) bool {
	c, cancel := s.call(nil)
	defer cancel()
	g, err := cli.Get(c, s.cfg.Prefix+"quorum", clientv3.WithCountOnly())
	return err == nil && resp.ResponseHeader != nil && g.Header.RaftTerm == resp.ResponseHeader.RaftTerm
}

// renew extends the lease, or, without one (fenced, or at start-up),
// revokes what is left of the old one and grants a new one. It reports
// whether the host holds a live lease now.
func (s *Source) renew() bool {
	s.mu.Lock()
	id, serving := s.leaseID, s.leaseID != 0 && s.fenced.IsZero()
	s.mu.Unlock()
	cli, err := s.client()
	if err != nil {
		return false
	}
	sent := time.Now()
	if serving {
		resp, err := s.renewAny(cli, id)
		switch {
		case err == nil && resp.TTL > 0:
			s.mu.Lock()
			if s.leaseID == id {
				s.expires = sent.Add(time.Duration(resp.TTL) * time.Second)
			}
			s.mu.Unlock()
			return true
		case err == nil, errors.Is(err, rpctypes.ErrLeaseNotFound):
			s.fence("the cluster expired this host's lease")
		}
		return false
	}
	if id != 0 {
		// The keys of a withdrawn lease are VIPs this host no longer
		// uses: revoking frees them now, not at the TTL.
		c, cancel := s.call(nil)
		_, err := cli.Revoke(c, id)
		cancel()
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return false
		}
	}
	c, cancel := s.call(nil)
	g, err := cli.Grant(c, int64(s.cfg.LeaseTTL/time.Second))
	cancel()
	if err != nil {
		return false
	}
	s.mu.Lock()
	wasFenced := !s.fenced.IsZero()
	s.leaseID, s.expires, s.fenced = g.ID, sent.Add(time.Duration(g.TTL)*time.Second), time.Time{}
	s.mu.Unlock()
	s.saveLeaseID(g.ID)
	if wasFenced && id != 0 {
		s.log.Warn("etcd: answering again with a new lease; holders get their VIPs back where still free", "lease", fmt.Sprintf("%x", int64(g.ID)))
	} else {
		s.log.Info("etcd: lease granted", "lease", fmt.Sprintf("%x", int64(g.ID)), "ttl", g.TTL)
	}
	return true
}

// fence withdraws every VIP of this host: the manager is told each is lost
// (it takes them off the adapter and out of the kernel maps) and Acquire
// answers exhausted until renew gets a lease again.
func (s *Source) fence(why string) {
	s.mu.Lock()
	if !s.fenced.IsZero() {
		s.mu.Unlock()
		return
	}
	s.fenced = time.Now()
	lost := s.held
	s.held, s.keys = map[netip.Addr]lease.Holder{}, map[netip.Addr]keyRev{}
	until := time.Now().Add(s.keptFor())
	for a, h := range lost {
		s.last[h.Key()] = kept{addr: a, until: until}
	}
	id := s.leaseID
	s.mu.Unlock()
	s.log.Warn("etcd: fenced: withdrawing every VIP of this host", "why", why, "vips", len(lost), "lease", fmt.Sprintf("%x", int64(id)))
	reason := fmt.Errorf("%w (%s)", errFenced, why)
	for a, h := range lost {
		s.ev.Lost(h, a, reason)
	}
}
