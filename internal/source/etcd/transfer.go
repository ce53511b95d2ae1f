package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// errMoved is why a transfer fails whose record changed under it.
var errMoved = errors.New("the record is no longer the one this host wrote for the holder")

// Transfer implements source.Transferer: one transaction rewrites the
// record of l.Addr to name to, with uid l.UID (the caller sets it to the
// new holder's user) and since now, still bound to this host's lease. It
// compares that the record is the one this host last wrote there (its
// value, naming l.Holder and this host, and its mod revision) and that the
// key is bound to this host's lease; otherwise it fails and changes
// nothing. The lease returned is l held by to.
//
// A transfer whose answer never came is settled by writing the record back
// under the same compare. Only if that gets no answer either (the cluster
// is out of reach, and the host fences itself soon) may the record still
// change to name to later; the next transfer of the address then writes
// this host's record back first (writeBack), and a release deletes the key
// whatever it names.
func (s *Source) Transfer(l lease.Lease, to lease.Holder) (lease.Lease, error) {
	a := l.Addr
	fail := func(err error) (lease.Lease, error) {
		return lease.Lease{}, fmt.Errorf("etcd: transfer %s from %s to %s: %w", a, l.Holder, to, err)
	}
	s.mu.Lock()
	id, serving := s.leaseID, s.leaseID != 0 && s.fenced.IsZero()
	h, held := s.held[a]
	k := s.keys[a]
	toHolds := false
	for _, o := range s.held {
		toHolds = toHolds || o == to
	}
	s.mu.Unlock()
	switch {
	case !serving:
		return fail(errFenced)
	case !held || h != l.Holder:
		return fail(fmt.Errorf("%s does not hold it here", l.Holder))
	case toHolds:
		return fail(fmt.Errorf("%s already holds an address", to))
	}
	key := vipKey(s.cfg.Prefix, a)
	mine := func(kv *mvccpb.KeyValue) bool {
		return kv != nil && kv.CreateRevision == k.create && clientv3.LeaseID(kv.Lease) == id
	}
	if k.mod == 0 {
		var err error
		if k, err = s.writeBack(key, id, k); err != nil {
			return fail(err)
		}
		s.setKey(a, l.Holder, k)
	}
	val := s.record(to, l.UID)
	resp, err := s.casPut(key, id, k.val, k.mod, val)
	var mod int64 // the moved record's
	switch {
	case err == nil && resp.Succeeded:
		mod = resp.Header.Revision
	case err == nil:
		// A copy of this transaction sent to another member (hedge) may
		// have been applied first.
		if kv := rangeKV(resp); mine(kv) && string(kv.Value) == val {
			mod = kv.ModRevision
		} else {
			return fail(errMoved)
		}
	default:
		// No answer: the transfer may still be applied. Writing the
		// record back under the same compare settles it: if that
		// succeeds the transfer never can; if not, the key says whether
		// the transfer was applied.
		r, err2 := s.casPut(key, id, k.val, k.mod, k.val)
		switch kv := rangeKV(r); {
		case err2 != nil:
			k.mod = 0 // unknown until the next transfer writes it back
			s.setKey(a, l.Holder, k)
			return fail(err)
		case r.Succeeded:
			k.mod = r.Header.Revision
			s.setKey(a, l.Holder, k)
			return fail(err)
		case mine(kv) && string(kv.Value) == val:
			mod = kv.ModRevision
		case mine(kv) && string(kv.Value) == k.val:
			k.mod = kv.ModRevision // a copy of the write-back
			s.setKey(a, l.Holder, k)
			return fail(err)
		default:
			return fail(errMoved)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leaseID != id || !s.fenced.IsZero() || s.held[a] != l.Holder || s.keys[a].create != k.create {
		// Released or fenced while the transaction ran: the release
		// deletes the key whatever it names, a fence lets it expire.
		return fail(errors.New("released or withdrawn meanwhile"))
	}
	s.held[a] = to
	s.keys[a] = keyRev{val: val, create: k.create, mod: mod}
	delete(s.last, to.Key())
	out := l
	out.Holder = to
	return out, nil
}

// writeBack writes k's record to key again, exactly over what the key
// holds now if it is k's key (bound to lease id, created at k.create), and
// returns k with the new mod revision. It is for a key whose last write
// (a transfer) got no answer and may have been applied since or still be
// on its way: that write compares an older mod revision and fails once
// this one is done. A copy of the old write landing between the read and
// the write makes it read again.
func (s *Source) writeBack(key string, id clientv3.LeaseID, k keyRev) (keyRev, error) {
	mine := func(kv *mvccpb.KeyValue) bool {
		return kv != nil && kv.CreateRevision == k.create && clientv3.LeaseID(kv.Lease) == id
	}
	for range 3 {
		kv, err := s.getKey(key)
		if err != nil {
			return k, err
		}
		if !mine(kv) {
			return k, errMoved
		}
		resp, err := s.casPut(key, id, string(kv.Value), kv.ModRevision, k.val)
		switch kv := rangeKV(resp); {
		case err != nil:
			return k, err
		case resp.Succeeded:
			k.mod = resp.Header.Revision
			return k, nil
		case mine(kv) && string(kv.Value) == k.val:
			k.mod = kv.ModRevision // a copy applied first (hedge)
			return k, nil
		}
	}
	return k, errMoved
}

// casPut writes val to key, bound to lease id, if the key holds old, bound
// to id, at mod revision mod; otherwise it reads the key.
func (s *Source) casPut(key string, id clientv3.LeaseID, old string, mod int64, val string) (*clientv3.TxnResponse, error) {
	return hedge(s, nil, func(c context.Context, cli *clientv3.Client) (*clientv3.TxnResponse, error) {
		return cli.Txn(c).
			If(clientv3.Compare(clientv3.Value(key), "=", old),
				clientv3.Compare(clientv3.LeaseValue(key), "=", id),
				clientv3.Compare(clientv3.ModRevision(key), "=", mod)).
			Then(clientv3.OpPut(key, val, clientv3.WithLease(id))).
			Else(clientv3.OpGet(key)).Commit()
	})
}

// getKey reads key (nil: there is none).
func (s *Source) getKey(key string) (*mvccpb.KeyValue, error) {
	resp, err := hedge(s, nil, func(c context.Context, cli *clientv3.Client) (*clientv3.GetResponse, error) {
		return cli.Get(c, key)
	})
	if err != nil || len(resp.Kvs) != 1 {
		return nil, err
	}
	return resp.Kvs[0], nil
}

// rangeKV is the key a failed casPut read, nil if none.
func rangeKV(resp *clientv3.TxnResponse) *mvccpb.KeyValue {
	if resp == nil || resp.Succeeded || len(resp.Responses) != 1 {
		return nil
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
		return kvs[0]
	}
	return nil
}

// setKey records k for a if a is still held by h with the same key.
func (s *Source) setKey(a netip.Addr, h lease.Holder, k keyRev) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[a] == h && s.keys[a].create == k.create {
		s.keys[a] = k
	}
}
