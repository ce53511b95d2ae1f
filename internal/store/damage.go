package store

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A lease file can be lost in ways bbolt cannot see: emptied (`: > file`),
// deleted, or replaced by another host's copy. bbolt then starts a fresh
// database, and every address that live sessions still use would go back
// to the pool. The seal, a small file beside the database written once when
// the database is created, remembers that a database existed and which one.
const (
	sealName     = "leases.db.seal"
	metaInstance = "instance"
)

const replacedAdvice = "the lease file was emptied, removed or replaced; live sessions may still hold VIPs recorded in the original. " +
	"Restore the original leases.db from a backup, or, if no session holds a VIP any more, remove both leases.db and " + sealName + " to start with no leases"

type seal struct {
	Instance string    `json:"instance"`
	Created  time.Time `json:"created"`
}

func readSeal(dir string) (seal, error) {
	path := filepath.Join(dir, sealName)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return seal{}, nil
	}
	if err != nil {
		return seal{}, fmt.Errorf("store: %w", err)
	}
	var s seal
	if err := json.Unmarshal(b, &s); err != nil || s.Instance == "" {
		return seal{}, fmt.Errorf("store: %s is damaged (%d bytes, want JSON with an instance id); it guards %s against being replaced: restore it, or remove it only together with %s",
			path, len(b), FileName, FileName)
	}
	return s, nil
}

// writeSeal records instance beside the database, atomically and durably:
// a crash leaves either no seal (the next start writes it) or a whole one.
func writeSeal(dir, instance string) error {
	b, _ := json.Marshal(seal{Instance: instance, Created: time.Now().UTC()})
	tmp := filepath.Join(dir, sealName+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, sealName))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func newInstance() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// checkFile refuses, before bbolt sees it, a database that the seal says
// existed but is now missing or empty (bbolt would create a fresh one), and a
// file too short to hold its own header pages.
func checkFile(path string, s seal) error {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && s.Instance != "":
		return fmt.Errorf("store: %s is missing, but %s says instance %s was created on %s: %s",
			path, sealName, s.Instance, s.Created.Format(time.RFC3339), replacedAdvice)
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("store: %w", err)
	case info.Size() == 0 && s.Instance != "":
		return fmt.Errorf("store: %s is empty (0 bytes), but %s says instance %s was created on %s: %s",
			path, sealName, s.Instance, s.Created.Format(time.RFC3339), replacedAdvice)
	case info.Size() > 0 && info.Size() < minFileSize:
		return fmt.Errorf("store: %s is damaged: %d bytes, shorter than the %d bytes of a database's header pages", path, info.Size(), minFileSize)
	}
	return nil
}

// minFileSize is bbolt's smallest database: two meta pages, a freelist page
// and a root leaf page, at the smallest page size bbolt uses.
const minFileSize = 4 * 1024

// guard runs f, which reads the memory-mapped database, turning what a
// damaged file provokes into an error: a fault on a page the file no longer
// has (SIGBUS after truncation) and bbolt's assertion panics. Without it the
// daemon would die with a Go runtime trace instead of naming the file.
func guard(f func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the file is damaged (%v); restore it from a backup, or move it aside together with %s to start with no leases", r, sealName)
		}
	}()
	return f()
}

// verify reads every page the database references, so that damage shows
// at start-up, inside guard, rather than as a crash at some later lookup.
func verify(db *bolt.DB) error {
	return db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return walk(b, 0)
		})
	})
}

// maxNesting bounds the recursion over nested buckets: ipvirt's own file
// has none, and a damaged page must not recurse without end.
const maxNesting = 8

func walk(b *bolt.Bucket, depth int) error {
	if depth > maxNesting {
		return errors.New("buckets nested deeper than any ipvirt writes")
	}
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			nb := b.Bucket(k)
			if nb == nil {
				return fmt.Errorf("key %q has no value and is no bucket", k)
			}
			return walk(nb, depth+1)
		}
		return nil
	})
}
