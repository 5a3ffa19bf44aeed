package viewwire

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// TestReaderReadsEveryField checks that a Reader returns bytes and varint
// fields with their values, skips the other types, stops at a malformed
// field and allocates nothing.
func TestReaderReadsEveryField(t *testing.T) {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "one")
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, 300)
	b = protowire.AppendTag(b, 3, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 7)
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendString(b, "four")

	type field struct {
		num    protowire.Number
		typ    protowire.Type
		bytes  string
		varint uint64
	}
	want := []field{{1, protowire.BytesType, "one", 0}, {2, protowire.VarintType, "", 300}, {3, protowire.Fixed32Type, "", 0}, {4, protowire.BytesType, "four", 0}}
	var got []field
	r := NewReader(b)
	for r.Next() {
		f := field{num: r.Num, typ: r.Type}
		switch r.Type {
		case protowire.BytesType:
			f.bytes = string(r.Bytes)
		case protowire.VarintType:
			f.varint = r.Varint
		}
		got = append(got, f)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("field %d: read %v, want %v", i, got[i], want[i])
		}
	}

	if allocs := testing.AllocsPerRun(100, func() {
		r := NewReader(b)
		for r.Next() {
		}
	}); allocs != 0 {
		t.Errorf("reading allocates %v times", allocs)
	}

	truncated := bytes.Clone(b[:len(b)-1])
	r = NewReader(truncated)
	n := 0
	for r.Next() {
		n++
	}
	if r.Err() == nil || n != 3 {
		t.Errorf("a truncated last field: %d fields read, error %v", n, r.Err())
	}
}
