package etcd

import (
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// undo deletes a's key in the background, retrying every retryWait until
// etcd answers, if the key is still the one this host wrote: bound to
// lease id and, when val is set, holding val.
//
// It is needed because a request that timed out here may still have been
// applied by the cluster (a leader change, a slow member): a create whose
// answer was lost leaves a key no holder uses, and since the host renews
// its lease for as long as it runs, that address would be lost to the
// whole farm until the daemon restarts. A release that failed would do the
// same. While the undo runs this host does not take a again (take checks
// undoing), so the delete cannot remove a key written for a new holder.
// Once the lease is gone (fenced: revoked or expired) the key is gone
// with it and the undo stops.
func (s *Source) undo(a netip.Addr, id clientv3.LeaseID, val string) {
	s.mu.Lock()
	if s.undoing[a] {
		s.mu.Unlock()
		return
	}
	s.undoing[a] = true
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.undoing, a)
			s.mu.Unlock()
		}()
		key := vipKey(s.cfg.Prefix, a)
		cmp := []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", id)}
		if val != "" {
			cmp = append(cmp, clientv3.Compare(clientv3.Value(key), "=", val))
		}
		for {
			s.mu.Lock()
			live := s.leaseID == id
			s.mu.Unlock()
			if !live || s.ctx.Err() != nil {
				return
			}
			if cli, err := s.client(); err == nil {
				c, cancel := s.call(nil)
				_, err = cli.Txn(c).If(cmp...).Then(clientv3.OpDelete(key)).Commit()
				cancel()
				if err == nil {
					return
				}
			}
			t := time.NewTimer(retryWait)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}()
}

// undoingLocked reports whether a's key is being deleted (s.mu held).
func (s *Source) undoingLocked(a netip.Addr) bool { return s.undoing[a] }
