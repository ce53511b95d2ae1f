package etcd

import (
	"context"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// undo deletes a's key in the background, retrying every retryWait until
// etcd answers, if the key is still the one this host wrote: bound to
// lease id and created at revision create, or, create 0 (a create whose
// answer never came), holding val when val is set (the revision is read
// first).
//
// It is needed because a request that timed out here may still have been
// applied by the cluster (a leader change, a slow member): a create whose
// answer was lost leaves a key no holder uses, and since the host renews
// its lease for as long as it runs, that address would be lost to the
// whole farm until the daemon restarts. A release that failed would do the
// same. While the undo runs this host does not take a again (take checks
// undoing). The delete compares the key's create revision, so that a copy
// of it applied late (a retry, a hedge: hedge) cannot remove the key of a
// later holder. Once the lease is gone (fenced: revoked or expired) the
// key is gone with it and the undo stops.
func (s *Source) undo(a netip.Addr, id clientv3.LeaseID, val string, create int64) {
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
		for {
			s.mu.Lock()
			live := s.leaseID == id
			s.mu.Unlock()
			if !live || s.ctx.Err() != nil {
				return
			}
			if s.undoOnce(key, id, val, &create) {
				return
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

// undoOnce is one try of undo: it reports whether etcd answered, the key
// gone or no longer the one to delete. A create revision read is kept in
// *create for the next try.
func (s *Source) undoOnce(key string, id clientv3.LeaseID, val string, create *int64) bool {
	if *create == 0 {
		resp, err := hedge(s, nil, func(c context.Context, cli *clientv3.Client) (*clientv3.GetResponse, error) {
			return cli.Get(c, key)
		})
		if err != nil {
			return false
		}
		if len(resp.Kvs) != 1 {
			return true
		}
		kv := resp.Kvs[0]
		if clientv3.LeaseID(kv.Lease) != id || (val != "" && string(kv.Value) != val) {
			return true
		}
		*create = kv.CreateRevision
	}
	rev := *create
	_, err := hedge(s, nil, func(c context.Context, cli *clientv3.Client) (*clientv3.TxnResponse, error) {
		return cli.Txn(c).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev),
				clientv3.Compare(clientv3.LeaseValue(key), "=", id)).
			Then(clientv3.OpDelete(key)).Commit()
	})
	return err == nil
}

// undoingLocked reports whether a's key is being deleted (s.mu held).
func (s *Source) undoingLocked(a netip.Addr) bool { return s.undoing[a] }
