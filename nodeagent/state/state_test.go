package state

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

func resource(name, version string) *spokev1.Resource {
	return &spokev1.Resource{Name: name, Version: version, Kind: &spokev1.Resource_Service{Service: &spokev1.Service{Namespace: "ns", Name: name}}}
}

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return s, path
}

func TestRoundTrip(t *testing.T) {
	s, path := openTemp(t)
	if err := s.Update([]*spokev1.Resource{resource("ns/a", "1"), resource("ns/b", "2")}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if s.Revisions() != nil {
		t.Fatalf("a new file has revisions %v", s.Revisions())
	}
	rev := &spokev1.ApiRevisions{Services: 7, EndpointSlices: 1 << 40, Nodes: 3}
	if err := s.Update([]*spokev1.Resource{resource("ns/c", "3")}, []string{"ns/a"}, rev); err != nil {
		t.Fatal(err)
	}
	// An update without revisions keeps the stored ones.
	if err := s.Update(nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !proto.Equal(s.Revisions(), rev) {
		t.Errorf("revisions after reopening %v, want %v", s.Revisions(), rev)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !proto.Equal(got["ns/b"], resource("ns/b", "2")) || !proto.Equal(got["ns/c"], resource("ns/c", "3")) {
		t.Fatalf("loaded %v", got)
	}
	checkIntegrity(t, s)
}

func checkIntegrity(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("bbolt integrity: %v", err)
	}
}

// corrupt damages one stored value behind the Store's back.
func corrupt(t *testing.T, path string, mutate func(b *bolt.Bucket) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		return mutate(tx.Bucket(resourcesBucket))
	}); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptionIsDetected(t *testing.T) {
	cases := map[string]func(b *bolt.Bucket) error{
		"flipped byte": func(b *bolt.Bucket) error {
			v := append([]byte(nil), b.Get([]byte("ns/a"))...)
			v[len(v)-1] ^= 0xff
			return b.Put([]byte("ns/a"), v)
		},
		"short value":    func(b *bolt.Bucket) error { return b.Put([]byte("ns/a"), []byte{1, 2}) },
		"unknown format": func(b *bolt.Bucket) error { return b.Put([]byte("ns/a"), []byte{9, 0, 0, 0, 0}) },
		"wrong key": func(b *bolt.Bucket) error {
			return b.Put([]byte("ns/z"), b.Get([]byte("ns/a")))
		},
		"schema": func(b *bolt.Bucket) error {
			return b.Tx().Bucket(metaBucket).Put(schemaKey, []byte{0, 0, 0, 99})
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			s, path := openTemp(t)
			if err := s.Update([]*spokev1.Resource{resource("ns/a", "1")}, nil, nil); err != nil {
				t.Fatal(err)
			}
			s.Close()
			corrupt(t, path, mutate)
			requireReset(t, path)
		})
	}
}

// requireReset checks that the file at path is refused as corrupt, and
// that OpenOrReset moves it aside and opens a fresh, empty one.
func requireReset(t *testing.T, path string) {
	t.Helper()
	if _, err := Open(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v, want ErrCorrupt", err)
	}
	s, moved, err := OpenOrReset(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if moved == "" {
		t.Fatal("corrupt file not moved aside")
	}
	if _, err := os.Stat(moved); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(); err != nil || len(got) != 0 {
		t.Fatalf("fresh file holds %v, %v", got, err)
	}
}

func TestGarbageFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	requireReset(t, path)
}

func FuzzDecode(f *testing.F) {
	v, _ := encode(resource("ns/a", "1"))
	f.Add(v)
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decode(b)
		if err != nil {
			return
		}
		again, err := encode(r)
		if err != nil {
			t.Fatalf("re-encoding a decoded value: %v", err)
		}
		if _, err := decode(again); err != nil {
			t.Fatalf("decoding a re-encoded value: %v", err)
		}
	})
}

// asNobody runs f on a thread whose file-system identity is nobody's, so a
// root test process meets the EACCES an agent without rights to its file
// meets. The thread is discarded afterwards.
func asNobody(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch the file-system user")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		unix.Setfsgid(65534)
		unix.Setfsuid(65534)
		f()
	}()
	<-done
}

// A file the agent may not read is not corrupt: it stays where it is and
// the error says it is unavailable.
func TestUnreadableFileIsNotMovedAside(t *testing.T) {
	s, path := openTemp(t)
	if err := s.Update([]*spokev1.Resource{resource("a", "v1")}, nil, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var moved string
	asNobody(t, func() { _, moved, err = OpenOrReset(path) })
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("opening an unreadable file: %v, want ErrUnavailable", err)
	}
	if moved != "" {
		t.Fatalf("an unreadable file was moved aside to %s", moved)
	}
	after, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("the file changed or went away: %v", err)
	}
}

// TestStampChangesWithEveryUpdate checks that a stamp names one content:
// none for a new file, a new one with every update (even one that writes
// nothing), the same after reopening, and none for a stored value of the
// wrong length.
func TestStampChangesWithEveryUpdate(t *testing.T) {
	s, path := openTemp(t)
	if s.Stamp() != nil {
		t.Fatalf("a new file has stamp %x", s.Stamp())
	}
	seen := map[string]bool{}
	for i, put := range [][]*spokev1.Resource{{resource("ns/a", "1")}, {resource("ns/a", "2")}, nil} {
		if err := s.Update(put, nil, nil); err != nil {
			t.Fatal(err)
		}
		if len(s.Stamp()) != stampSize || seen[string(s.Stamp())] {
			t.Fatalf("update %d: stamp %x, want a new one of %d bytes", i, s.Stamp(), stampSize)
		}
		seen[string(s.Stamp())] = true
	}
	last := s.Stamp()
	s.Close()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.Stamp(), last) {
		t.Errorf("after reopening: stamp %x, want %x", s.Stamp(), last)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(metaBucket).Put(stampKey, []byte("short")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Stamp() != nil {
		t.Errorf("a stamp of the wrong length read as %x, want none", s.Stamp())
	}
}
