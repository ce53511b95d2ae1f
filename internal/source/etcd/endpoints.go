package etcd

import (
	"context"
	"errors"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Requests on the allocation path (probe, free, take, release, transfer,
// the farm listing) go through hedge: to one member first, and to the next
// as well while no answer has come.
//
// Why: the client balances requests over its endpoints round-robin, and a
// member that hangs (frozen, overloaded, half-cut) keeps its connection
// open, so a third of the requests waited out the whole request deadline
// on it and the sessions logging on meanwhile got the machine IP although
// the cluster kept its quorum (TestAcquireWithMemberFrozen). gRPC
// keepalives would not do: grpc-go pings no more often than every 10 s, and
// a frozen member still accepts TCP connections, so every request until
// then fails. Shorter deadlines with a retry would fail requests that are
// merely slow under load, and cost the same duplicate as a hedge.
//
// Why a duplicate is safe: every write here is a transaction whose compare
// makes a second copy of it a no-op or an answer to read. A create compares
// that the key does not exist and reads it otherwise, and a key bound to
// this host's lease naming the same holder is the holder's (take): two
// copies of one create make one key. Deletes and transfers compare the
// key's create or mod revision, which no later write can have, so a copy
// applied late (a member thawed with the request still in its socket)
// cannot touch a key created again or a record written since. What a late
// create can still do is come back after its key was released: the address
// then stays taken until this host's lease ends. The single client had the
// same window for every request that timed out, at a far higher rate.
//
// Why not every member at once (as renewAny): every write goes through
// raft on the leader whichever member receives it, so a copy per member
// would triple the cluster's work in the allocation storms that already
// starve lease renewals. A hedge costs a second copy only when a member is
// slow, and the member that answered last is asked first next time, so
// with one frozen only the requests in flight at the freeze pay the wait.

// hedgeAfter is how long a request waits for the member asked first before
// it asks the next as well.
func (s *Source) hedgeAfter() time.Duration { return s.cfg.DialTimeout / 4 }

// hedge runs req through the members' clients, first the one that answered
// last, then, every hedgeAfter without an answer or at once when one fails,
// the next; the first answer wins and the other copies are cancelled. The
// whole is bounded by the request deadline (call). With one endpoint it is
// one request through the cluster client.
func hedge[T any](s *Source, ctx context.Context, req func(context.Context, *clientv3.Client) (T, error)) (T, error) {
	var zero T
	clis := s.endpointClients()
	var idx []int // indices of connected clients, the preferred first
	if n := len(clis); n > 0 {
		first := int(s.pref.Load()) % n
		for i := range n {
			if j := (first + i) % n; clis[j] != nil {
				idx = append(idx, j)
			}
		}
	}
	if len(idx) < 2 {
		cli, err := s.client()
		if err != nil {
			return zero, err
		}
		clis, idx = []*clientv3.Client{cli}, []int{-1}
	}
	c, cancel := s.call(ctx)
	defer cancel() // the copies still waiting
	type answer struct {
		i   int
		v   T
		err error
	}
	ch := make(chan answer, len(idx))
	sent := 0
	send := func() {
		i := idx[sent]
		sent++
		cli := clis[max(i, 0)]
		go func() {
			v, err := req(c, cli)
			ch <- answer{i, v, err}
		}()
	}
	send()
	t := time.NewTimer(s.hedgeAfter())
	defer t.Stop()
	var last error
	for waiting := 1; waiting > 0; {
		select {
		case a := <-ch:
			waiting--
			if a.err == nil {
				if a.i >= 0 {
					s.pref.Store(int32(a.i))
				}
				return a.v, nil
			}
			last = a.err
			if sent < len(idx) && c.Err() == nil {
				send()
				waiting++
				t.Reset(s.hedgeAfter())
			}
		case <-t.C:
			if sent < len(idx) && c.Err() == nil {
				send()
				waiting++
				t.Reset(s.hedgeAfter())
			}
		}
	}
	if last == nil {
		last = errors.New("etcd: no endpoint")
	}
	return zero, last
}

// prefer makes endpoint i the one asked first (tests).
func (s *Source) prefer(i int) { s.pref.Store(int32(i)) }

// endpointClients returns a client per endpoint, by the endpoints' order,
// nil for one not connected yet (and a nil slice with one endpoint). Those
// missing are connected in the background: with etcd authentication a
// client's creation waits for its member to hand it a token, which a
// frozen member never does, and no request must wait for that.
func (s *Source) endpointClients() []*clientv3.Client {
	if len(s.cfg.Endpoints) < 2 {
		return nil
	}
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if s.epClis == nil {
		s.epClis = make([]*clientv3.Client, len(s.cfg.Endpoints))
		s.epDialing = make([]bool, len(s.cfg.Endpoints))
	}
	for i, e := range s.cfg.Endpoints {
		if s.epClis[i] != nil || s.epDialing[i] || s.ctx.Err() != nil {
			continue
		}
		s.epDialing[i] = true
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c := s.ccfg
			c.Context, c.Endpoints = s.ctx, []string{e}
			cli, err := clientv3.New(c)
			s.cmu.Lock()
			defer s.cmu.Unlock()
			s.epDialing[i] = false
			if err == nil {
				s.epClis[i] = cli // closed by Close, which waits for this
			}
		}()
	}
	return slices.Clone(s.epClis)
}
