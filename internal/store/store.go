// Package store persists leases and run-time settings in a bbolt file, so
// that a daemon killed at any moment comes back knowing who holds what.
//
// Writes go through a group commit: callers queue operations and wait; one
// goroutine applies everything queued so far in a single transaction, with a
// single fsync. Under load a batch forms while the previous fsync runs, so
// durability costs one fsync per batch, not per allocation; when idle, a
// lone write commits at once (no batching timer).
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// FileName is the store's file inside state_dir.
const FileName = "leases.db"

var (
	bucketMeta     = []byte("meta")
	bucketLeases   = []byte("leases")
	bucketPrograms = []byte("programs")
	bucketSessions = []byte("sessions")
)

// schemaVersion is bumped when the on-disk encoding changes incompatibly.
const schemaVersion = "1"

// maxBatch bounds one transaction so a storm cannot build an unbounded one.
const maxBatch = 4096

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("store: closed")

// Store is the lease database.
type Store struct {
	db   *bolt.DB
	path string

	mu     sync.RWMutex // guards closed against concurrent queueing
	closed bool
	ops    chan op
	done   chan struct{}

	commits atomic.Uint64
	written atomic.Uint64
	lastErr atomic.Pointer[error] // nil after a commit that succeeded
}

// op puts value at key in bucket, or deletes key when value is nil.
type op struct {
	bucket []byte
	key    string
	value  []byte
	done   chan error
}

// Open opens (creating if needed) the store at dir/leases.db. It fails fast
// if another process holds the file: two daemons on one store would hand out
// the same VIPs. It also refuses a file that is damaged, emptied or replaced
// (see checkInstance and verify): starting over such a file would forget
// holders that still use their VIPs.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: state_dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	seal, err := readSeal(dir)
	if err != nil {
		return nil, err
	}
	if err := checkFile(path, seal); err != nil {
		return nil, err
	}
	if err := precheck(path); err != nil {
		return nil, fmt.Errorf("store: %s is damaged: %w; restore it from a backup, or move it aside together with %s to start with no leases", path, err, sealName)
	}
	var db *bolt.DB
	err = guard(func() (err error) {
		db, err = bolt.Open(path, 0o600, &bolt.Options{
			Timeout:        time.Second,
			NoFreelistSync: true,
			FreelistType:   bolt.FreelistMapType,
		})
		return err
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("store: %s is locked by another process (is another ipvirtd running with this state_dir?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	var instance string
	err = guard(func() error {
		if err := verify(db); err != nil {
			return err
		}
		return db.Update(func(tx *bolt.Tx) (err error) {
			instance, err = initBuckets(tx, seal)
			return err
		})
	})
	if err == nil && seal.Instance == "" {
		err = writeSeal(dir, instance)
	}
	if err != nil {
		guard(db.Close)
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	s := &Store{db: db, path: path, ops: make(chan op, maxBatch), done: make(chan struct{})}
	go s.commitLoop()
	return s, nil
}

// initBuckets creates the buckets of a new file and checks the schema and
// instance of an existing one; it returns the file's instance id.
func initBuckets(tx *bolt.Tx, seal seal) (string, error) {
	for _, b := range [][]byte{bucketMeta, bucketLeases, bucketPrograms, bucketSessions} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return "", err
		}
	}
	meta := tx.Bucket(bucketMeta)
	switch v := meta.Get([]byte("schema")); {
	case v == nil:
		if err := meta.Put([]byte("schema"), []byte(schemaVersion)); err != nil {
			return "", err
		}
	case string(v) != schemaVersion:
		return "", fmt.Errorf("schema version %q, this ipvirtd reads %q", v, schemaVersion)
	}
	instance := string(meta.Get([]byte(metaInstance)))
	switch {
	case instance == "" && seal.Instance != "":
		// Only a file created before the state directory was sealed lacks
		// an instance, and then there is no seal either.
		return "", fmt.Errorf("the file has no instance id but %s names instance %s: %s", sealName, seal.Instance, replacedAdvice)
	case instance == "":
		instance = newInstance()
		if err := meta.Put([]byte(metaInstance), []byte(instance)); err != nil {
			return "", err
		}
	case seal.Instance != "" && instance != seal.Instance:
		return "", fmt.Errorf("the file is instance %s but %s names instance %s (created %s): %s",
			instance, sealName, seal.Instance, seal.Created.Format(time.RFC3339), replacedAdvice)
	}
	return instance, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// record is the persisted form of a lease. It is separate from lease.Lease so
// that the type can change without silently changing the file format.
type record struct {
	Holder  string     `json:"holder"`
	Addr    netip.Addr `json:"addr"`
	Subnet  string     `json:"subnet"`
	Source  string     `json:"source"`
	Granted time.Time  `json:"granted"`
	Expiry  time.Time  `json:"expiry,omitzero"`
	UID     uint32     `json:"uid"`
	State   []byte     `json:"state,omitempty"`
}

func toRecord(l lease.Lease) *record {
	return &record{Holder: l.Holder.Key(), Addr: l.Addr, Subnet: l.Subnet.String(), Source: l.Source,
		Granted: l.Granted, Expiry: l.Expiry, UID: l.UID, State: l.State}
}

// lease decodes and checks a record read from the file. The address and
// subnet go to the adapter, the kernel maps and every ANSWER (whose prefix
// field is a byte that a client refuses above 32), so a record whose VIP is
// not an IPv4 address inside an IPv4 subnet is damage, not a lease.
func (r *record) lease() (lease.Lease, error) {
	h, err := lease.ParseHolder(r.Holder)
	if err != nil {
		return lease.Lease{}, err
	}
	sub, err := netip.ParsePrefix(r.Subnet)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("lease %s: subnet: %w", r.Holder, err)
	}
	if !r.Addr.Is4() || r.Addr.IsUnspecified() {
		return lease.Lease{}, fmt.Errorf("lease %s: address %q is not an IPv4 unicast address", r.Holder, r.Addr)
	}
	if !sub.Addr().Is4() || !sub.Contains(r.Addr) {
		return lease.Lease{}, fmt.Errorf("lease %s: subnet %s is not an IPv4 subnet holding %s", r.Holder, sub, r.Addr)
	}
	return lease.Lease{Holder: h, Addr: r.Addr, Subnet: sub, Source: r.Source, Granted: r.Granted,
		Expiry: r.Expiry, UID: r.UID, State: r.State}, nil
}

// Put durably records l (replacing any lease of the same holder) and returns
// once it is on disk.
func (s *Store) Put(l lease.Lease) error {
	// Encoding here, on the caller's goroutine, keeps the commit loop to the
	// work that must be serial.
	v, err := json.Marshal(toRecord(l))
	if err != nil {
		return fmt.Errorf("store: encode lease %s: %w", l.Holder, err)
	}
	return s.wait(op{bucket: bucketLeases, key: l.Holder.Key(), value: v})
}

// Delete durably removes the lease of h.
func (s *Store) Delete(h lease.Holder) error {
	return s.wait(op{bucket: bucketLeases, key: h.Key()})
}

// DeleteAsync queues the removal without waiting for the fsync. Releases can
// be lazy: after a crash, a lease whose holder is gone is released again.
func (s *Store) DeleteAsync(h lease.Holder) {
	s.queue(op{bucket: bucketLeases, key: h.Key()})
}

func (s *Store) wait(o op) error {
	o.done = make(chan error, 1)
	if err := s.queue(o); err != nil {
		return err
	}
	return <-o.done
}

func (s *Store) queue(o op) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	s.ops <- o
	return nil
}

func (s *Store) commitLoop() {
	defer close(s.done)
	batch := make([]op, 0, maxBatch)
	for first := range s.ops {
		batch = append(batch[:0], first)
	drain:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-s.ops:
				if !ok {
					break drain
				}
				batch = append(batch, o)
			default:
				break drain
			}
		}
		err := s.db.Update(func(tx *bolt.Tx) error { return apply(tx, batch) })
		if err != nil {
			err = fmt.Errorf("store: commit of %d operations: %w", len(batch), err)
			s.lastErr.Store(&err)
		} else {
			s.lastErr.Store(nil)
		}
		s.commits.Add(1)
		s.written.Add(uint64(len(batch)))
		for _, o := range batch {
			if o.done != nil {
				o.done <- err
			}
		}
	}
}

func apply(tx *bolt.Tx, batch []op) error {
	for _, o := range batch {
		b := tx.Bucket(o.bucket)
		var err error
		if o.value != nil {
			err = b.Put([]byte(o.key), o.value)
		} else {
			err = b.Delete([]byte(o.key))
		}
		if err != nil {
			return fmt.Errorf("%s %q: %w", o.bucket, o.key, err)
		}
	}
	return nil
}

// Leases returns every persisted lease. Records that fail to decode are
// returned as errors alongside the good ones rather than failing the load:
// one damaged record must not strand every other holder.
func (s *Store) Leases() ([]lease.Lease, []error) {
	var out []lease.Lease
	var bad []error
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				bad = append(bad, fmt.Errorf("store: lease %q: %w", k, err))
				return nil
			}
			l, err := r.lease()
			if err != nil {
				bad = append(bad, fmt.Errorf("store: lease %q: %w", k, err))
				return nil
			}
			out = append(out, l)
			return nil
		})
	})
	if err != nil {
		bad = append(bad, fmt.Errorf("store: read leases: %w", err))
	}
	return out, bad
}

// Meta returns a metadata value, or nil.
func (s *Store) Meta(key string) []byte {
	var v []byte
	s.db.View(func(tx *bolt.Tx) error {
		v = append([]byte(nil), tx.Bucket(bucketMeta).Get([]byte(key))...)
		return nil
	})
	if len(v) == 0 {
		return nil
	}
	return v
}

// SetMeta durably stores a metadata value.
func (s *Store) SetMeta(key string, value []byte) error {
	return s.wait(op{bucket: bucketMeta, key: key, value: value})
}

// ProgramOverride is a run-time change to the per-program list.
type ProgramOverride string

const (
	ProgramAdded   ProgramOverride = "added"
	ProgramRemoved ProgramOverride = "removed"
)

// ProgramOverrides returns the run-time additions and removals made with
// `ipvirtctl programs`, by path.
func (s *Store) ProgramOverrides() map[string]ProgramOverride {
	out := map[string]ProgramOverride{}
	s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPrograms).ForEach(func(k, v []byte) error {
			out[string(k)] = ProgramOverride(v)
			return nil
		})
	})
	return out
}

// SetProgramOverride durably records a run-time change; an empty override
// forgets the path (back to what the config file says).
func (s *Store) SetProgramOverride(path string, o ProgramOverride) error {
	if o == "" {
		return s.wait(op{bucket: bucketPrograms, key: path})
	}
	return s.wait(op{bucket: bucketPrograms, key: path, value: []byte(o)})
}

// Healthy reports whether the last commit reached the disk; err says why
// not (a full or read-only disk). A lease the store cannot record is never
// granted, so callers fall back; this makes the daemon's health say so.
func (s *Store) Healthy() error {
	if e := s.lastErr.Load(); e != nil {
		return *e
	}
	return nil
}

// Stats counts commits (fsyncs) and operations written, for metrics and for
// the group-commit benchmark.
func (s *Store) Stats() (commits, ops uint64) { return s.commits.Load(), s.written.Load() }

// Close flushes queued writes and closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.ops)
	s.mu.Unlock()
	<-s.done
	return s.db.Close()
}
