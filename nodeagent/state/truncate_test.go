package state

import (
	"bytes"
	"os"
	"testing"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// A file cut short through its data (a full disk or a crash of the file
// system during a write) is corrupt: it is moved aside, and reading it does
// not kill the process (its pages past the end would be a SIGBUS in the
// memory map, which no recover catches).
func TestTruncatedFileIsCorrupt(t *testing.T) {
	s, path := openTemp(t)
	var big []*spokev1.Resource
	for _, name := range []string{"ns/a", "ns/b", "ns/c"} {
		r := resource(name, "1")
		r.GetService().ClusterIps = []string{string(bytes.Repeat([]byte("x"), 6000))}
		big = append(big, r)
	}
	if err := s.Update(big, nil, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := encode(big[2])
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(raw, v)
	if at < 0 {
		t.Fatal("value not found in the file")
	}
	if err := os.Truncate(path, int64(at+len(v)/2)); err != nil {
		t.Fatal(err)
	}
	requireReset(t, path)
}
