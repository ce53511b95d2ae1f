// Package etcd is the farm-wide static pool: every session host's ipvirtd
// allocates from one range kept in an etcd cluster, so that the hosts of a
// remote-desktop farm share a pool instead of each holding a slice of it.
//
// Each VIP in use is a key, <prefix>vips/<address>, created in a
// transaction that succeeds only if the key does not exist: two hosts can
// never create it both. Every key of a host is bound to the host's etcd
// lease, which the host renews every lease_ttl/3. A host that cannot renew
// withdraws all its VIPs (fences itself) a safety margin before the lease
// can run out at the cluster, after which other hosts may take them: a
// partitioned host's sessions lose their VIPs rather than risk sharing
// them. A host killed and restarted within the TTL takes its lease back
// (its id is kept in the state directory) and keeps its holders' VIPs.
package etcd

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/pool"
	"github.com/ipvirt/ipvirt/internal/source"
)

// Name is the config name of this source.
const Name = "etcd"

// errFenced is why a fenced host answers no VIP.
var errFenced = errors.New("etcd: this host's lease could not be renewed in time: VIPs withdrawn until etcd answers again")

// Source allocates static_pool addresses through etcd.
type Source struct {
	cfg    Config
	rng    source.Range
	size   int
	hostID string
	host   string
	state  string // file keeping the lease id across restarts
	ccfg   clientv3.Config
	ev     source.Events
	log    *slog.Logger
	margin time.Duration

	mu      sync.Mutex
	held    map[netip.Addr]lease.Holder
	keys    map[netip.Addr]keyRev // what this host wrote at each held address
	last    map[string]kept       // holder key → its address before a fence
	undoing map[netip.Addr]bool   // keys being deleted after an unanswered request (undo)
	leaseID clientv3.LeaseID      // 0: none (fenced)
	expires time.Time             // when the cluster may expire the lease, at the earliest
	fenced  time.Time             // zero while serving

	cmu       sync.Mutex
	cli       *clientv3.Client   // nil until connected
	epClis    []*clientv3.Client // one per endpoint (renewAny, hedge), nil until connected
	epDialing []bool             // endpoints being connected
	lastErr   string             // the last connection error logged
	pref      atomic.Int32       // the endpoint hedge asks first: the last to answer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// client returns the connection to the cluster, connecting first if there
// is none (for at most dial_timeout).
func (s *Source) client() (*clientv3.Client, error) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if s.cli != nil {
		return s.cli, nil
	}
	if err := s.ctx.Err(); err != nil {
		return nil, err
	}
	c := s.ccfg
	c.Context = s.ctx
	cli, err := clientv3.New(c)
	if err != nil {
		err = fmt.Errorf("etcd: connect to %s: %w", strings.Join(s.cfg.Endpoints, ","), err)
		if msg := err.Error(); msg != s.lastErr {
			s.lastErr = msg
			s.log.Warn("etcd: no connection; this host stays fenced until there is one", "err", err)
		}
		return nil, err
	}
	s.lastErr = ""
	s.cli = cli
	return cli, nil
}

var (
	_ source.Source     = (*Source)(nil)
	_ source.Claimer    = (*Source)(nil)
	_ source.Transferer = (*Source)(nil)
)

// keyRev is what this host knows of one of its keys: the value it wrote
// (or found, its own) and the key's revisions. Requests on the key compare
// them, so that a copy of a request applied late (hedge) cannot touch a key
// created again or a record written since.
type keyRev struct {
	val         string
	create, mod int64 // mod 0: a write's answer never came (transfer): unknown
}

// Margin is how long before its lease can expire at the cluster a host
// withdraws its VIPs: a fifth of the TTL, at least a second. The lease's
// expiry is counted from when the renewal that set it was sent, by this
// host's monotonic clock; the margin covers the cluster's clock running
// up to 20 % faster than this host's, and the time withdrawing takes.
func Margin(ttl time.Duration) time.Duration { return max(ttl/5, time.Second) }

// New connects to the cluster and takes back the lease a previous run left
// (its id in stateDir), or starts fenced until etcd answers. hostID is the
// host's stable id (machine id).
func New(cfg Config, rng source.Range, hostID []byte, stateDir string, ev source.Events, log *slog.Logger) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	p, err := pool.New(rng.Start, rng.End)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	pw, err := cfg.password()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if ev == nil {
		ev = nopEvents{}
	}
	// Connecting (and authenticating) is left to the first request, each
	// bounded by dial_timeout: New must not block on a cluster that is
	// down, and a host that starts partitioned starts fenced.
	ccfg := clientv3.Config{Endpoints: cfg.Endpoints, TLS: tlsCfg, Username: cfg.Username, Password: pw,
		DialTimeout: cfg.DialTimeout,
		// Its own logger says every retry; the source logs what matters.
		Logger: zap.NewNop()}
	hostname, _ := os.Hostname()
	s := &Source{
		cfg: cfg, rng: rng, size: p.Size(), hostID: hex.EncodeToString(hostID), host: hostname,
		state: filepath.Join(stateDir, "etcd-lease"), ccfg: ccfg, ev: ev, margin: Margin(cfg.LeaseTTL),
		log:  log.With("source", Name),
		held: map[netip.Addr]lease.Holder{}, keys: map[netip.Addr]keyRev{}, last: map[string]kept{}, undoing: map[netip.Addr]bool{},
		fenced: time.Now(),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// Hosts start asking different members first.
	s.pref.Store(int32(rand.IntN(len(cfg.Endpoints))))
	s.endpointClients() // connected in the background, before the first request
	s.resume()
	s.wg.Add(1)
	go s.keep()
	return s, nil
}

type nopEvents struct{}

func (nopEvents) Renewed(lease.Lease)                  {}
func (nopEvents) Lost(lease.Holder, netip.Addr, error) {}

// Name implements source.Source.
func (s *Source) Name() string { return Name }

// call runs one request with the request deadline.
func (s *Source) call(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = s.ctx
	}
	return context.WithTimeout(ctx, s.cfg.DialTimeout)
}

// record is this host's value for h's key.
func (s *Source) record(h lease.Holder, uid uint32) string {
	b, _ := json.Marshal(Record{Host: s.host, HostID: s.hostID, Holder: h.Key(), UID: uid, Since: time.Now().UTC().Truncate(time.Second)})
	return string(b)
}

// serving returns the lease id while the host may hand out VIPs.
func (s *Source) serving() (clientv3.LeaseID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leaseID == 0 || !s.fenced.IsZero() {
		return 0, fmt.Errorf("%w: %w", errFenced, source.ErrExhausted)
	}
	return s.leaseID, nil
}

// Acquire implements source.Source: the holder's address before a fence if
// it is still free, else a free address of the range, each taken with a
// create-if-absent transaction.
func (s *Source) Acquire(ctx context.Context, h lease.Holder) (lease.Lease, error) {
	id, err := s.serving()
	if err != nil {
		return lease.Lease{}, err
	}
	uid, _ := source.UserFrom(ctx)
	val := s.record(h, uid)
	s.mu.Lock()
	prev, hadPrev := s.last[h.Key()]
	reserved := s.reservedLocked(h.Key())
	s.mu.Unlock()
	if hadPrev && s.inRange(prev.addr) {
		if ok, err := s.take(ctx, id, prev.addr, h, val); err != nil {
			return lease.Lease{}, err
		} else if ok {
			return s.lease(h, prev.addr), nil
		}
	}
	// Random probes first, a listing of the farm's keys when they find
	// nothing (a pool nearly full) or lose every race.
	for round := 0; round < 5; round++ {
		var cands []netip.Addr
		if round < 2 {
			if cands, err = s.probe(ctx, 16, reserved); err != nil {
				return lease.Lease{}, err
			}
			if len(cands) == 0 {
				round = 1
				continue
			}
		} else {
			if cands, err = s.free(ctx, 8, reserved); err != nil {
				return lease.Lease{}, err
			}
			if len(cands) == 0 {
				return lease.Lease{}, fmt.Errorf("etcd: pool of %d addresses: all in use across the farm: %w", s.size, source.ErrExhausted)
			}
		}
		for _, a := range cands {
			ok, err := s.take(ctx, id, a, h, val)
			if err != nil {
				return lease.Lease{}, err
			}
			if ok {
				return s.lease(h, a), nil
			}
		}
	}
	return lease.Lease{}, fmt.Errorf("etcd: every free address tried was taken by another host first: %w", source.ErrExhausted)
}

func (s *Source) lease(h lease.Holder, a netip.Addr) lease.Lease {
	return lease.Lease{Holder: h, Addr: a, Subnet: s.rng.Subnet, Source: Name, Granted: time.Now()}
}

func (s *Source) inRange(a netip.Addr) bool {
	return a.Is4() && !a.Less(s.rng.Start) && !s.rng.End.Less(a)
}

// take creates a's key for h under lease id. It reports false when another
// holder has the key; a key this host already has for h (bound to the same
// lease) is h's.
func (s *Source) take(ctx context.Context, id clientv3.LeaseID, a netip.Addr, h lease.Holder, val string) (bool, error) {
	key := vipKey(s.cfg.Prefix, a)
	s.mu.Lock()
	busy := s.undoingLocked(a)
	s.mu.Unlock()
	if busy {
		return false, nil
	}
	// Sent twice (hedge), the second copy finds the first's key and reads
	// it: this host's for h, so h's either way.
	resp, err := hedge(s, ctx, func(c context.Context, cli *clientv3.Client) (*clientv3.TxnResponse, error) {
		return cli.Txn(c).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, val, clientv3.WithLease(id))).
			Else(clientv3.OpGet(key)).Commit()
	})
	if err != nil {
		// The cluster may have created the key all the same.
		s.undo(a, id, val, 0)
		return false, fmt.Errorf("etcd: take %s: %w: %w", a, err, source.ErrExhausted)
	}
	k := keyRev{val: val, create: resp.Header.Revision, mod: resp.Header.Revision}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) != 1 || clientv3.LeaseID(kvs[0].Lease) != id {
			return false, nil
		}
		r, err := parseRecord(kvs[0].Value)
		if err != nil || r.HostID != s.hostID || r.Holder != h.Key() {
			return false, nil
		}
		k = keyRev{val: string(kvs[0].Value), create: kvs[0].CreateRevision, mod: kvs[0].ModRevision}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leaseID != id || !s.fenced.IsZero() {
		// Fenced while the transaction ran: the key dies with the lease.
		return false, fmt.Errorf("%w: %w", errFenced, source.ErrExhausted)
	}
	if other, ok := s.held[a]; ok && other != h {
		return false, nil
	}
	s.held[a] = h
	s.keys[a] = k
	delete(s.last, h.Key())
	return true, nil
}

// kept is a holder's address before a fence, which other holders of this
// host leave to it until then, so that once etcd answers again each holder
// gets its own back (where no other host took it meanwhile).
type kept struct {
	addr  netip.Addr
	until time.Time
}

// keptFor is how long a fenced holder's address is kept for it.
func (s *Source) keptFor() time.Duration { return max(3*s.cfg.LeaseTTL, 30*time.Second) }

// reservedLocked returns the addresses kept for holders other than key.
func (s *Source) reservedLocked(key string) map[netip.Addr]bool {
	now := time.Now()
	out := map[netip.Addr]bool{}
	for k, v := range s.last {
		switch {
		case now.After(v.until):
			delete(s.last, k)
		case k != key:
			out[v.addr] = true
		}
	}
	return out
}

// probe reads n random addresses' keys in one request and returns those
// no host held. It costs the same whatever the pool's size and fill, where
// listing every key (free) costs the whole farm's keys per allocation: an
// allocation storm of a few hundred holders over a few thousand keys kept
// the cluster so busy that hosts' lease renewals missed their deadline and
// the hosts fenced themselves. The read may be stale (serializable, from
// any member): the create-if-absent transaction decides.
func (s *Source) probe(ctx context.Context, n int, reserved map[netip.Addr]bool) ([]netip.Addr, error) {
	start, size := pool.V4(s.rng.Start), uint32(s.size)
	picks := map[netip.Addr]bool{}
	var addrs []netip.Addr
	var ops []clientv3.Op
	s.mu.Lock()
	for range 2 * n {
		a := pool.FromV4(start + rand.Uint32N(size))
		if _, mine := s.held[a]; mine || reserved[a] || picks[a] {
			continue
		}
		picks[a] = true
		addrs = append(addrs, a)
		ops = append(ops, clientv3.OpGet(vipKey(s.cfg.Prefix, a), clientv3.WithCountOnly(), clientv3.WithSerializable()))
		if len(ops) == n {
			break
		}
	}
	s.mu.Unlock()
	if len(ops) == 0 {
		return nil, nil
	}
	resp, err := hedge(s, ctx, func(c context.Context, cli *clientv3.Client) (*clientv3.TxnResponse, error) {
		return cli.Txn(c).Then(ops...).Commit()
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: probe VIPs: %w: %w", err, source.ErrExhausted)
	}
	var out []netip.Addr
	for i, r := range resp.Responses {
		if rr := r.GetResponseRange(); rr != nil && rr.Count == 0 {
			out = append(out, addrs[i])
		}
	}
	return out, nil
}

// free lists up to n addresses no host holds and none is kept for, from a
// random point of the range so that hosts starting together do not all try
// the same ones.
func (s *Source) free(ctx context.Context, n int, reserved map[netip.Addr]bool) ([]netip.Addr, error) {
	resp, err := hedge(s, ctx, func(c context.Context, cli *clientv3.Client) (*clientv3.GetResponse, error) {
		return cli.Get(c, s.cfg.Prefix+"vips/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: list VIPs: %w: %w", err, source.ErrExhausted)
	}
	taken := make(map[netip.Addr]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if a, ok := keyAddr(s.cfg.Prefix, string(kv.Key)); ok {
			taken[a] = true
		}
	}
	start, size := pool.V4(s.rng.Start), uint32(s.size)
	off := rand.Uint32N(size)
	var out []netip.Addr
	for i := uint32(0); i < size && len(out) < n; i++ {
		a := pool.FromV4(start + (off+i)%size)
		if !taken[a] && !reserved[a] {
			out = append(out, a)
		}
	}
	return out, nil
}

// Adopt implements source.Source: a lease persisted before a restart. Its
// key must still be this host's (the lease was taken back within its TTL)
// or free to create again; a host that is fenced, or finds the address
// taken by another, refuses it and the manager withdraws it.
func (s *Source) Adopt(l lease.Lease) error {
	id, err := s.serving()
	if err != nil {
		return fmt.Errorf("etcd: adopt %s for %s: %w", l.Addr, l.Holder, err)
	}
	ok, err := s.take(nil, id, l.Addr, l.Holder, s.record(l.Holder, l.UID))
	if err != nil {
		return fmt.Errorf("etcd: adopt %s for %s: %w", l.Addr, l.Holder, err)
	}
	if !ok {
		return fmt.Errorf("etcd: adopt %s for %s: held by another host or holder now", l.Addr, l.Holder)
	}
	return nil
}

// Claim implements source.Claimer, as Adopt for a live holder found using a.
func (s *Source) Claim(h lease.Holder, a netip.Addr) (lease.Lease, error) {
	l := s.lease(h, a)
	if err := s.Adopt(l); err != nil {
		return lease.Lease{}, err
	}
	return l, nil
}

// Release implements source.Source: the key is deleted if it is still the
// one this host created (its create revision, bound to this lease),
// retried until etcd answers or the lease ends.
func (s *Source) Release(l lease.Lease) {
	s.mu.Lock()
	if h, ok := s.held[l.Addr]; !ok || h != l.Holder {
		s.mu.Unlock()
		return
	}
	delete(s.held, l.Addr)
	k := s.keys[l.Addr]
	delete(s.keys, l.Addr)
	id := s.leaseID
	s.mu.Unlock()
	if id == 0 {
		return
	}
	// Deleted in the background, retried until etcd answers: the lease
	// lives as long as this host does, so a key left behind would keep the
	// address from the farm.
	s.undo(l.Addr, id, "", k.create)
}

// Stats implements source.Source.
func (s *Source) Stats() source.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := source.Stats{Size: s.size, Used: len(s.held), Healthy: s.fenced.IsZero()}
	if st.Healthy {
		st.Health = fmt.Sprintf("etcd lease %x, renewed until %s", int64(s.leaseID), s.expires.Format(time.TimeOnly))
	} else {
		st.Health = "fenced since " + s.fenced.Format(time.TimeOnly) + ": etcd has not renewed this host's lease"
	}
	return st
}

// Close implements source.Source. The lease is not revoked: a daemon
// restarted within its TTL takes it back with every key.
func (s *Source) Close() error {
	s.cancel()
	s.wg.Wait()
	s.cmu.Lock()
	defer s.cmu.Unlock()
	for _, c := range s.epClis {
		if c != nil {
			c.Close()
		}
	}
	if s.cli == nil {
		return nil
	}
	return s.cli.Close()
}

// saveLeaseID keeps id for the next start (0: none).
func (s *Source) saveLeaseID(id clientv3.LeaseID) {
	tmp := s.state + ".tmp"
	data := []byte(strconv.FormatInt(int64(id), 10) + "\n")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		_, err = f.Write(data)
		if err == nil {
			err = f.Sync()
		}
		f.Close()
	}
	if err == nil {
		err = os.Rename(tmp, s.state)
	}
	if err != nil {
		s.log.Warn("etcd: keep the lease id for a restart", "file", s.state, "err", err)
	}
}

func (s *Source) savedLeaseID() clientv3.LeaseID {
	b, err := os.ReadFile(s.state)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 {
		return 0
	}
	return clientv3.LeaseID(n)
}

// heldCopy returns holder → address, for tests and reports.
func (s *Source) heldCopy() map[lease.Holder]netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[lease.Holder]netip.Addr, len(s.held))
	for a, h := range s.held {
		out[h] = a
	}
	return out
}
