package store

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// unsetSession is the kernel's audit session id of a process in none.
const unsetSession = math.MaxUint32

// Registration is an audit session that PAM registered with the daemon
// (`ipvirtctl session open` under pam_exec). It is persisted because PAM
// runs once per login: a daemon that forgot its registrations at a restart
// could never learn them again, and under session_trust: pam every live
// session would lose its VIP.
type Registration struct {
	ID  uint32 `json:"id"`  // the audit session id
	UID uint32 `json:"uid"` // its login uid
	// Leader and LeaderStart name the process that registered the session
	// (the parent of the pam_exec command: sshd's session process), by pid
	// and start time (clock ticks after boot), so that a reused pid is not
	// taken for it.
	Leader      int       `json:"leader"`
	LeaderStart uint64    `json:"leader_start"`
	Registered  time.Time `json:"registered"`
	// Boot is the boot id the registration was made under: audit session
	// ids start again at every boot, so a registration of another boot
	// names somebody else's session.
	Boot string `json:"boot"`
}

func registrationKey(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

// PutRegistration durably records r and returns once it is on disk.
func (s *Store) PutRegistration(r Registration) error {
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode registration of session %d: %w", r.ID, err)
	}
	return s.wait(op{bucket: bucketSessions, key: registrationKey(r.ID), value: v})
}

// DeleteRegistration durably forgets the registration of session id.
func (s *Store) DeleteRegistration(id uint32) error {
	return s.wait(op{bucket: bucketSessions, key: registrationKey(id)})
}

// DeleteRegistrationAsync queues the removal without waiting: a record
// left behind by a crash names a session with no process left, which the
// first scan of the next start drops again.
func (s *Store) DeleteRegistrationAsync(id uint32) {
	s.queue(op{bucket: bucketSessions, key: registrationKey(id)})
}

// Registrations returns every persisted registration. Records that fail to
// decode are returned as errors beside the good ones.
func (s *Store) Registrations() ([]Registration, []error) {
	var out []Registration
	var bad []error
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSessions).ForEach(func(k, v []byte) error {
			r, err := decodeRegistration(k, v)
			if err != nil {
				bad = append(bad, fmt.Errorf("store: registration %q: %w", k, err))
				return nil
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		bad = append(bad, fmt.Errorf("store: read registrations: %w", err))
	}
	return out, bad
}

// decodeRegistration checks a record read from the file: its key is its
// session id, which names a session, and its leader is a pid.
func decodeRegistration(k, v []byte) (Registration, error) {
	var r Registration
	if err := json.Unmarshal(v, &r); err != nil {
		return Registration{}, err
	}
	switch {
	case string(k) != registrationKey(r.ID):
		return Registration{}, fmt.Errorf("key names another session than the record (%d)", r.ID)
	case r.ID == unsetSession:
		return Registration{}, fmt.Errorf("session id %d is the kernel's \"no session\"", r.ID)
	case r.Leader <= 0 || r.Leader > math.MaxInt32:
		return Registration{}, fmt.Errorf("leader %d is not a pid", r.Leader)
	}
	return r, nil
}
