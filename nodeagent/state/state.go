// Package state keeps the resources an agent applied in a bbolt file, so a
// restarted agent programs its datapath before it reconnects.
//
// The file is untrusted input: every value carries a format byte and a
// CRC-32C of its payload, and the file carries a schema version. Open
// reports a file it cannot trust with ErrCorrupt; OpenOrReset moves such a
// file aside and starts empty, so a bad file costs a resync, never a crash
// loop. A file the system will not let us read or write (EACCES, EROFS,
// EIO, ENOSPC) is not corrupt: Open reports it with ErrUnavailable and
// nothing is moved, so the file is still there once the fault is fixed.
//
// Caveats: the file is a cache of what the control plane sent, not a source
// of truth; a failed write loses nothing the next resync does not restore.
package state

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// SchemaVersion is the layout of the file this package writes.
const SchemaVersion = 1

const valueFormat = 1

var (
	metaBucket      = []byte("meta")
	resourcesBucket = []byte("resources")
	schemaKey       = []byte("schema")
	revisionsKey    = []byte("api-revisions")
	stampKey        = []byte("stamp")
	crcTable        = crc32.MakeTable(crc32.Castagnoli)
)

// Errors callers branch on.
var (
	// ErrCorrupt marks a state file that cannot be trusted.
	ErrCorrupt = errors.New("corrupt state file")
	// ErrUnavailable marks a state file the system would not let us read or
	// write: an I/O or permission error, not a property of its content.
	ErrUnavailable = errors.New("state file unavailable")
)

// Store is an open state file.
type Store struct {
	db   *bolt.DB
	path string
	// opened is what Open read and checked, until the first Load.
	opened map[string]*spokev1.Resource
	// revisions are those of the newest response stored; nil when none.
	revisions *spokev1.ApiRevisions
	// stamp is new with every Update; nil when none was stored.
	stamp []byte
}

// Open opens or creates the state file at path and checks its schema and
// every value. It fails with ErrCorrupt if any of them is bad.
func Open(path string) (s *Store, err error) {
	// bbolt trusts its pages; a damaged file can make it panic. A panic here
	// is a corrupt file, not a bug to crash on.
	defer func() {
		if r := recover(); r != nil {
			if s != nil {
				s.db.Close()
			}
			s, err = nil, fmt.Errorf("opening state file %s: %w: %v", path, ErrCorrupt, r)
		}
	}()
	// A page past the end of a file cut short faults in bbolt's memory map
	// (SIGBUS), which kills the process whatever recovers, unless the
	// goroutine turns faults into panics. checkSize keeps the reads of
	// every other goroutine inside the file.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("opening state file %s: locked by another process: %w", path, err)
		}
		return nil, fmt.Errorf("opening state file %s: %w: %w", path, classify(err), err)
	}
	s = &Store{db: db, path: path}
	if err := s.checkSize(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	if s.opened, err = s.load(); err != nil {
		db.Close()
		return nil, err
	}
	if s.revisions, err = s.loadRevisions(); err != nil {
		db.Close()
		return nil, err
	}
	s.loadStamp()
	return s, nil
}

// Stamp identifies the file's content as of the last Update: every Update
// stores a new random one with what it writes, in the same transaction. A
// datapath stamped with it once it held that content still holds it if the
// stamps agree after a restart (see datapath.Stamper). nil when the file
// has none.
func (s *Store) Stamp() []byte { return s.stamp }

// stampSize is the length of a stamp: random, so that no two updates share one.
const stampSize = 16

// loadStamp reads the stamp; a value of the wrong length is no stamp.
func (s *Store) loadStamp() {
	s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(metaBucket).Get(stampKey); len(v) == stampSize {
			s.stamp = slices.Clone(v)
		}
		return nil
	})
}

// Revisions returns the API revisions stored with the newest update that
// carried them, nil when none did.
func (s *Store) Revisions() *spokev1.ApiRevisions { return s.revisions }

func (s *Store) loadRevisions() (*spokev1.ApiRevisions, error) {
	var out *spokev1.ApiRevisions
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(metaBucket).Get(revisionsKey)
		if v == nil {
			return nil
		}
		payload, err := checked(v)
		if err != nil {
			return fmt.Errorf("%w: API revisions: %w", ErrCorrupt, err)
		}
		out = &spokev1.ApiRevisions{}
		if err := proto.Unmarshal(payload, out); err != nil {
			return fmt.Errorf("%w: API revisions: %w", ErrCorrupt, err)
		}
		return nil
	})
	return out, err
}

// OpenOrReset opens the state file; if it is corrupt, it renames it to
// path.corrupt-TIMESTAMP and starts a new one. moved is the new name of a
// file moved aside, or "".
func OpenOrReset(path string) (s *Store, moved string, err error) {
	s, err = Open(path)
	if err == nil || !errors.Is(err, ErrCorrupt) {
		return s, "", err
	}
	moved = fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405.000000000"))
	if rerr := os.Rename(path, moved); rerr != nil {
		return nil, "", fmt.Errorf("moving corrupt state file aside: %w (it was: %w)", rerr, err)
	}
	s, err = Open(path)
	return s, moved, err
}

// checkSize reports a file shorter than its pages reach as corrupt: cut
// short by a full disk, or by a crash of a file system that does not order
// its writes. Reading those pages would fault.
func (s *Store) checkSize() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("%w: %w", classify(err), err)
	}
	return s.db.View(func(tx *bolt.Tx) error {
		if reach := tx.Size(); reach > fi.Size() {
			return fmt.Errorf("%w: the file is %d bytes, its pages reach %d: cut short", ErrCorrupt, fi.Size(), reach)
		}
		return nil
	})
}

func (s *Store) init() error {
	// A file of this schema is read, not written: a restart waits for no
	// sync to disk.
	var ready bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		ready = meta != nil && tx.Bucket(resourcesBucket) != nil && bytes.Equal(meta.Get(schemaKey), binary.BigEndian.AppendUint32(nil, SchemaVersion))
		return nil
	}); err != nil {
		return fmt.Errorf("%w: initialising: %w", classify(err), err)
	}
	if ready {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(resourcesBucket); err != nil {
			return err
		}
		v := meta.Get(schemaKey)
		if v == nil {
			return meta.Put(schemaKey, binary.BigEndian.AppendUint32(nil, SchemaVersion))
		}
		if len(v) != 4 || binary.BigEndian.Uint32(v) != SchemaVersion {
			return fmt.Errorf("%w: schema %x, want %d", ErrCorrupt, v, SchemaVersion)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("%w: initialising: %w", classify(err), err)
	}
	return err
}

// classify tells an error of the system (a syscall failed: permissions, a
// read-only or full file system, a failing disk) from one of the file's
// content.
func classify(err error) error {
	if _, ok := errors.AsType[syscall.Errno](err); ok {
		return ErrUnavailable
	}
	return ErrCorrupt
}

// Path returns the file's path.
func (s *Store) Path() string { return s.path }

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Load returns every stored resource by name. The first Load after Open
// returns what Open read and checked, so that a start decodes the file
// once.
func (s *Store) Load() (map[string]*spokev1.Resource, error) {
	if m := s.opened; m != nil {
		s.opened = nil
		return m, nil
	}
	return s.load()
}

// load reads and checks every value. Values are decoded on every CPU: a
// restart with 10,000 services waits for this.
func (s *Store) load() (map[string]*spokev1.Resource, error) {
	type entry struct {
		k, v []byte
		r    *spokev1.Resource
		err  error
	}
	var out map[string]*spokev1.Resource
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(resourcesBucket)
		if b == nil {
			return fmt.Errorf("%w: no resources bucket", ErrCorrupt)
		}
		// Keys and values point into the memory map, valid until the
		// transaction ends: they are decoded before it does.
		var entries []entry
		if err := b.ForEach(func(k, v []byte) error {
			entries = append(entries, entry{k: k, v: v})
			return nil
		}); err != nil {
			return err
		}
		var wg sync.WaitGroup
		workers := min(runtime.GOMAXPROCS(0), max(1, len(entries)/256))
		for w := range workers {
			wg.Go(func() {
				for i := w; i < len(entries); i += workers {
					e := &entries[i]
					e.r, e.err = decode(e.v)
				}
			})
		}
		wg.Wait()
		out = make(map[string]*spokev1.Resource, len(entries))
		for _, e := range entries {
			if e.err != nil {
				return fmt.Errorf("%w: resource %q: %w", ErrCorrupt, e.k, e.err)
			}
			if e.r.GetName() != string(e.k) {
				return fmt.Errorf("%w: resource %q stored under %q", ErrCorrupt, e.r.GetName(), e.k)
			}
			out[string(e.k)] = e.r
		}
		return nil
	})
	return out, err
}

// Update stores the put resources, deletes the removed names and, unless
// nil, replaces the stored API revisions, in one transaction that also
// stores a new stamp.
func (s *Store) Update(put []*spokev1.Resource, remove []string, revisions *spokev1.ApiRevisions) error {
	s.opened = nil
	stamp := make([]byte, stampSize)
	rand.Read(stamp)
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(metaBucket).Put(stampKey, stamp); err != nil {
			return fmt.Errorf("storing the stamp: %w", err)
		}
		if revisions != nil {
			v, err := encode(revisions)
			if err != nil {
				return fmt.Errorf("encoding API revisions: %w", err)
			}
			if err := tx.Bucket(metaBucket).Put(revisionsKey, v); err != nil {
				return fmt.Errorf("storing API revisions: %w", err)
			}
		}
		b := tx.Bucket(resourcesBucket)
		for _, name := range remove {
			if err := b.Delete([]byte(name)); err != nil {
				return fmt.Errorf("deleting %s: %w", name, err)
			}
		}
		for _, r := range put {
			v, err := encode(r)
			if err != nil {
				return fmt.Errorf("encoding %s: %w", r.GetName(), err)
			}
			if err := b.Put([]byte(r.GetName()), v); err != nil {
				return fmt.Errorf("storing %s: %w", r.GetName(), err)
			}
		}
		return nil
	})
	if err != nil {
		// What the transaction stored is unknown to the caller: no stamp
		// vouches for it.
		s.stamp = nil
		return err
	}
	s.stamp = stamp
	if revisions != nil {
		s.revisions = revisions
	}
	return nil
}

func encode(m proto.Message) ([]byte, error) {
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	v := make([]byte, 5, 5+len(payload))
	v[0] = valueFormat
	binary.BigEndian.PutUint32(v[1:5], crc32.Checksum(payload, crcTable))
	return append(v, payload...), nil
}

// checked returns a value's payload once its format and checksum hold.
func checked(v []byte) ([]byte, error) {
	if len(v) < 5 {
		return nil, errors.New("value too short")
	}
	if v[0] != valueFormat {
		return nil, fmt.Errorf("unknown value format %d", v[0])
	}
	payload := v[5:]
	if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(v[1:5]) {
		return nil, errors.New("checksum mismatch")
	}
	return payload, nil
}

func decode(v []byte) (*spokev1.Resource, error) {
	payload, err := checked(v)
	if err != nil {
		return nil, err
	}
	r := &spokev1.Resource{}
	if err := proto.Unmarshal(payload, r); err != nil {
		return nil, err
	}
	return r, nil
}
