package store

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func mkRegistration(id uint32) Registration {
	return Registration{ID: id, UID: 4000 + id, Leader: 100 + int(id), LeaderStart: 5000,
		Registered: time.Unix(1_800_000_000, 0).UTC(), Boot: "boot-a"}
}

// TestRegistrationsPersist: registrations outlive the store being closed
// and reopened (a daemon restart), deletions too, and a damaged record is
// reported beside the good ones rather than hiding them.
func TestRegistrationsPersist(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint32{7, 8, 9} {
		if err := s.PutRegistration(mkRegistration(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteRegistration(8); err != nil {
		t.Fatal(err)
	}
	s.DeleteRegistrationAsync(9)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(dir+"/"+FileName, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSessions).Put([]byte("10"), []byte(`{"id":11,"leader":5}`))
	})
	db.Close()

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, bad := s.Registrations()
	if len(got) != 1 || got[0] != mkRegistration(7) {
		t.Fatalf("registrations after reopening: %+v, want only session 7's", got)
	}
	if len(bad) != 1 || !strings.Contains(bad[0].Error(), `registration "10": key names another session`) {
		t.Fatalf("damaged record: %v", bad)
	}
}

// FuzzRegistration: a registration record as the file holds it. Whatever
// decodes names a session (not the kernel's "none") under its own key, with
// a pid as its leader, and is written back as the same registration.
func FuzzRegistration(f *testing.F) {
	b, _ := json.Marshal(mkRegistration(42))
	f.Add([]byte("42"), b)
	f.Add([]byte("4294967295"), []byte(`{"id":4294967295,"uid":0,"leader":1}`))
	f.Add([]byte("1"), []byte(`{"id":1,"leader":-3}`))
	f.Add([]byte("01"), []byte(`{"id":1,"leader":2}`))
	f.Fuzz(func(t *testing.T, k, v []byte) {
		r, err := decodeRegistration(k, v)
		if err != nil {
			return
		}
		if r.ID == unsetSession || r.Leader <= 0 || string(k) != registrationKey(r.ID) {
			t.Fatalf("accepted %q: %+v", k, r)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%+v does not encode: %v", r, err)
		}
		r2, err := decodeRegistration([]byte(registrationKey(r.ID)), again)
		if err != nil {
			t.Fatalf("re-encoded %s refused: %v", again, err)
		}
		if r2.ID != r.ID || r2.UID != r.UID || r2.Leader != r.Leader || r2.LeaderStart != r.LeaderStart ||
			!r2.Registered.Equal(r.Registered) || r2.Boot != r.Boot {
			t.Fatalf("round trip:\n%+v\n%+v", r, r2)
		}
	})
}
