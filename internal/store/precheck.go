package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// precheck reads the database with plain file reads, before bbolt maps it,
// and refuses a file whose page references point outside it. bbolt trusts
// its pages: opened with NoFreelistSync it walks the whole tree on a
// goroutine of its own, where a truncated file faults (SIGBUS) and a bad
// offset panics out of reach of any recover. That goroutine also reports
// what it finds wrong (key order, page types, double references) to the
// goroutine that opens the file, which panics, inside guard; but it keeps
// walking while the panic rolls its transaction back, and then faults on
// the closed transaction, out of reach again (FuzzOpen found it). So
// precheck refuses everything that walk would report, too: page ids,
// element arrays, keys and values inside the file, each page referenced
// once, branch and leaf pages only, keys in bbolt's order.
//
// The layout read here is bbolt's on-disk format, version 2: a 16-byte page
// header, two meta pages, branch and leaf pages of 16-byte elements whose
// key and value offsets are relative to the element.
func precheck(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if info.Size() == 0 {
		return nil // bbolt initialises an empty file; checkFile decides whether that is allowed
	}
	return precheckFile(f, info.Size())
}

// precheckFile is precheck on the size bytes of f.
func precheckFile(f io.ReaderAt, size int64) error {
	m, err := readMeta(f, size)
	if err != nil {
		return err
	}
	if m.hwm > uint64(size)/uint64(m.pageSize) {
		return fmt.Errorf("the file is %d bytes but its meta page counts %d pages of %d bytes: it was truncated",
			size, m.hwm, m.pageSize)
	}
	// Two meta pages and a root: fewer pages than that is no database (and
	// hwm-1 below would wrap around).
	if m.hwm < 3 {
		return fmt.Errorf("the meta page counts %d pages: a database has at least 3", m.hwm)
	}
	w := newWalker(f, size, m)
	if err := w.tree(m.root, 0); err != nil {
		return err
	}
	// bbolt checks the key order of every bucket stored in pages of its
	// own (the root and the buckets that are not inline).
	for _, root := range append([]uint64{m.root}, w.roots...) {
		if _, err := w.keyOrder(root, nil, nil); err != nil {
			return err
		}
	}
	return nil
}

const (
	pageHeaderSize = 16
	elementSize    = 16
	boltMagic      = 0xED0CDAED
	boltVersion    = 2

	branchPage = 0x01
	leafPage   = 0x02
	bucketLeaf = 0x01

	// bucketHeaderSize is a bucket value's root page id and sequence; an
	// inline bucket's page follows it inside the value.
	bucketHeaderSize = 16
	// maxPageSize bounds the page size a meta may claim: bbolt uses the OS
	// page size, and no Linux page is larger than 64 KiB.
	maxPageSize = 64 << 10
)

type metaInfo struct {
	pageSize uint32
	root     uint64
	hwm      uint64
	txid     uint64
}

// readMeta returns the newer of the two meta pages whose checksum holds,
// as bbolt does.
func readMeta(f io.ReaderAt, size int64) (metaInfo, error) {
	var best metaInfo
	found := false
	var why []error
	for i := range 2 {
		var b [pageHeaderSize + 64]byte
		at := int64(i) * 4096
		if i == 1 && found {
			at = int64(best.pageSize)
		}
		if at+int64(len(b)) > size {
			why = append(why, fmt.Errorf("meta page %d lies beyond the end of the file", i))
			continue
		}
		if _, err := f.ReadAt(b[:], at); err != nil {
			return metaInfo{}, err
		}
		m := b[pageHeaderSize:]
		le := binary.LittleEndian
		h := fnv.New64a()
		h.Write(m[:56])
		switch {
		case le.Uint32(m[0:]) != boltMagic:
			why = append(why, fmt.Errorf("meta page %d: not a bbolt meta page", i))
			continue
		case le.Uint32(m[4:]) != boltVersion:
			why = append(why, fmt.Errorf("meta page %d: format version %d, want %d", i, le.Uint32(m[4:]), boltVersion))
			continue
		case le.Uint64(m[56:]) != h.Sum64():
			why = append(why, fmt.Errorf("meta page %d: checksum mismatch", i))
			continue
		}
		mi := metaInfo{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), hwm: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}
		if mi.pageSize < 1024 || mi.pageSize > maxPageSize || mi.pageSize&(mi.pageSize-1) != 0 {
			why = append(why, fmt.Errorf("meta page %d: page size %d", i, mi.pageSize))
			continue
		}
		if !found || mi.txid > best.txid {
			best, found = mi, true
		}
	}
	if !found {
		return metaInfo{}, fmt.Errorf("no valid meta page: %w", errors.Join(why...))
	}
	return best, nil
}

type walker struct {
	f        io.ReaderAt
	pageSize int64
	hwm      uint64
	seen     map[uint64]bool
	// elements counts the elements walked, which may not exceed what the
	// file has room for: in a sound file every element has its own 16
	// bytes. Damage can make sibling bucket values overlap, so that one
	// inline page is reached through every element above it, level after
	// level: without this bound the walk of a 4 KiB page took 8^25 steps.
	elements, maxElements int64
	// pages holds every page read (with its overflow), roots the root
	// pages of buckets that are not inline: what keyOrder walks again.
	pages map[uint64][]byte
	roots []uint64
}

func newWalker(f io.ReaderAt, size int64, m metaInfo) *walker {
	return &walker{f: f, pageSize: int64(m.pageSize), hwm: m.hwm, seen: map[uint64]bool{}, maxElements: size / elementSize,
		pages: map[uint64][]byte{}}
}

// tree checks the page id and everything below it.
func (w *walker) tree(id uint64, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("page %d: tree deeper than %d levels", id, maxDepth)
	}
	if id < 2 || id >= w.hwm {
		return fmt.Errorf("page id %d outside 2..%d", id, w.hwm-1)
	}
	if w.seen[id] {
		return fmt.Errorf("page %d referenced twice", id)
	}
	w.seen[id] = true
	var hdr [pageHeaderSize]byte
	if _, err := w.f.ReadAt(hdr[:], int64(id)*w.pageSize); err != nil {
		return fmt.Errorf("page %d: %w", id, err)
	}
	if got := binary.LittleEndian.Uint64(hdr[0:]); got != id {
		return fmt.Errorf("page %d identifies itself as %d", id, got)
	}
	overflow := uint64(binary.LittleEndian.Uint32(hdr[12:]))
	if id+overflow+1 > w.hwm {
		return fmt.Errorf("page %d: %d overflow pages run past the last page", id, overflow)
	}
	// A page's overflow pages are its own: a reference to one of them,
	// or a page whose overflow covers one already walked, is damage (and
	// would make the walk read the same bytes again and again).
	for o := id + 1; o <= id+overflow; o++ {
		if w.seen[o] {
			return fmt.Errorf("page %d: its overflow covers page %d, referenced elsewhere", id, o)
		}
		w.seen[o] = true
	}
	span := int64(overflow+1) * w.pageSize
	buf := make([]byte, span)
	if _, err := w.f.ReadAt(buf, int64(id)*w.pageSize); err != nil {
		return fmt.Errorf("page %d: %w", id, err)
	}
	w.pages[id] = buf
	return w.page(buf, id, depth)
}

// maxDepth bounds the recursion: a B+tree of this file's size is a few
// levels deep, and nested buckets add one level each.
const maxDepth = 64

// page checks one page image (a mapped page or an inline bucket's).
func (w *walker) page(p []byte, id uint64, depth int) error {
	if depth > maxDepth { // inline buckets nest without a tree call
		return fmt.Errorf("page %d: buckets nested deeper than %d levels", id, maxDepth)
	}
	le := binary.LittleEndian
	flags, count := le.Uint16(p[8:]), int(le.Uint16(p[10:]))
	if pageHeaderSize+count*elementSize > len(p) {
		return fmt.Errorf("page %d: %d elements do not fit in %d bytes", id, count, len(p))
	}
	if w.elements += int64(count); w.elements > w.maxElements {
		return fmt.Errorf("page %d: %d elements walked, more than a %d-byte file holds: bucket values overlap",
			id, w.elements, w.maxElements*elementSize)
	}
	// Checked before the elements: an empty page of any other type has
	// no element to fail on, and bbolt asserts every page's type.
	if flags != branchPage && flags != leafPage {
		return fmt.Errorf("page %d: type %#x where a branch or leaf page belongs", id, flags)
	}
	if flags == branchPage && count == 0 {
		return fmt.Errorf("page %d: branch page without children", id)
	}
	for i := range count {
		at := pageHeaderSize + i*elementSize
		e := p[at : at+elementSize]
		// Offsets and sizes are 32-bit fields: summed in uint64, so that
		// no sum wraps around (an int is 32 bits on 386 and arm, where
		// three of them did and let a slice run outside the page).
		switch flags {
		case branchPage:
			pos, ksize := uint64(le.Uint32(e[0:])), uint64(le.Uint32(e[4:]))
			if uint64(at)+pos+ksize > uint64(len(p)) {
				return fmt.Errorf("page %d: branch key %d (offset %d, %d bytes) out of the %d-byte page", id, i, pos, ksize, len(p))
			}
			if err := w.tree(le.Uint64(e[8:]), depth+1); err != nil {
				return err
			}
		case leafPage:
			eflags, pos, ksize, vsize := le.Uint32(e[0:]), uint64(le.Uint32(e[4:])), uint64(le.Uint32(e[8:])), uint64(le.Uint32(e[12:]))
			if uint64(at)+pos+ksize+vsize > uint64(len(p)) {
				return fmt.Errorf("page %d: leaf element %d (offset %d, key %d, value %d bytes) out of the %d-byte page",
					id, i, pos, ksize, vsize, len(p))
			}
			if eflags&bucketLeaf == 0 {
				continue
			}
			vat := at + int(pos+ksize) // within the page, so it fits an int
			v := p[vat : vat+int(vsize)]
			if len(v) < bucketHeaderSize {
				return fmt.Errorf("page %d: bucket %d: %d-byte header", id, i, len(v))
			}
			if root := le.Uint64(v); root != 0 {
				w.roots = append(w.roots, root)
				if err := w.tree(root, depth+1); err != nil {
					return err
				}
			} else if len(v) < bucketHeaderSize+pageHeaderSize {
				return fmt.Errorf("page %d: inline bucket %d shorter than a page header", id, i)
			} else if inline := v[bucketHeaderSize:]; le.Uint16(inline[8:]) != leafPage {
				// bbolt inlines only leaf pages; it would follow an inline
				// branch's child ids back to the same inline page forever.
				return fmt.Errorf("page %d: inline bucket %d is not a leaf page", id, i)
			} else if err := w.page(inline, id, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// elementKey returns the key of element i of a page that page has checked.
func elementKey(p []byte, i int) []byte {
	le := binary.LittleEndian
	at := pageHeaderSize + i*elementSize
	e := p[at : at+elementSize]
	if le.Uint16(p[8:]) == branchPage {
		pos, ksize := int(le.Uint32(e[0:])), int(le.Uint32(e[4:]))
		return p[at+pos : at+pos+ksize]
	}
	pos, ksize := int(le.Uint32(e[4:])), int(le.Uint32(e[8:]))
	return p[at+pos : at+pos+ksize]
}

// keyOrder is bbolt's recursivelyCheckPageKeyOrderInternal (tx_check.go,
// v1.4 and later) on the pages tree read: keys ascending within a page,
// each subtree's keys between its branch key and the next one. It returns
// the largest key under id, as bbolt does, nil for an empty leaf; nil and
// empty keys are told apart exactly as there.
func (w *walker) keyOrder(id uint64, minClosed, maxOpen []byte) ([]byte, error) {
	p := w.pages[id]
	count := int(binary.LittleEndian.Uint16(p[10:]))
	var maxInSubtree []byte
	running := minClosed
	for i := range count {
		key := elementKey(p, i)
		if err := inOrder(id, i, key, running, maxOpen); err != nil {
			return nil, err
		}
		if binary.LittleEndian.Uint16(p[8:]) != branchPage {
			running = key
			continue
		}
		next := maxOpen
		if i < count-1 {
			next = elementKey(p, i+1)
		}
		at := pageHeaderSize + i*elementSize
		m, err := w.keyOrder(binary.LittleEndian.Uint64(p[at+8:]), key, next)
		if err != nil {
			return nil, err
		}
		maxInSubtree, running = m, m
	}
	if binary.LittleEndian.Uint16(p[8:]) != branchPage && count > 0 {
		return running, nil
	}
	return maxInSubtree, nil
}

// inOrder is bbolt's verifyKeyOrder.
func inOrder(id uint64, i int, key, prev, maxOpen []byte) error {
	if i == 0 && prev != nil && bytes.Compare(prev, key) > 0 {
		return fmt.Errorf("page %d: first key %x is below %x, its branch key", id, key, prev)
	}
	if i > 0 && bytes.Compare(prev, key) >= 0 {
		return fmt.Errorf("page %d: key %d (%x) is not above the one before (%x)", id, i, key, prev)
	}
	if maxOpen != nil && bytes.Compare(key, maxOpen) >= 0 {
		return fmt.Errorf("page %d: key %d (%x) is not below %x, the next branch key", id, i, key, maxOpen)
	}
	return nil
}
