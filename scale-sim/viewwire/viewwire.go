// Package viewwire reads the view stream's responses in their wire form,
// one field at a time, for the simulator's fleets: they decode responses
// by hand so that thousands of agents in one process do not each decode
// every view.
package viewwire

import (
	"google.golang.org/protobuf/encoding/protowire"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Field numbers of StreamViewsResponse and Resource, from the generated
// descriptors.
var (
	respFields = (&spokev1.StreamViewsResponse{}).ProtoReflect().Descriptor().Fields()
	resFields  = (&spokev1.Resource{}).ProtoReflect().Descriptor().Fields()

	Nonce     = respFields.ByName("nonce").Number()
	Resources = respFields.ByName("resources").Number()
	Removed   = respFields.ByName("removed_resources").Number()
	Revisions = respFields.ByName("api_revisions").Number()
	SendHeld  = respFields.ByName("send_initial_versions").Number()

	Name    = resFields.ByName("name").Number()
	Version = resFields.ByName("version").Number()
	Service = resFields.ByName("service").Number()
	Node    = resFields.ByName("node").Number()
)

// Reader reads an encoded message one field at a time:
//
//	r := viewwire.NewReader(b)
//	for r.Next() {
//		// r.Num, r.Type, and r.Bytes or r.Varint
//	}
//	if err := r.Err(); err != nil {
//
// A field of another type than bytes and varint is skipped over: only its
// number and type are set. Reading allocates nothing.
type Reader struct {
	b   []byte
	err error

	// Num and Type are the current field's number and wire type.
	Num  protowire.Number
	Type protowire.Type
	// Bytes is the value of the current field if it is a BytesType one: a
	// slice of the message, not a copy.
	Bytes []byte
	// Varint is the value of the current field if it is a VarintType one.
	Varint uint64
}

// NewReader returns a Reader of the message b.
func NewReader(b []byte) Reader { return Reader{b: b} }

// Next reads the next field; it returns false at the end of the message or
// at the first error, which Err returns.
func (r *Reader) Next() bool {
	if len(r.b) == 0 || r.err != nil {
		return false
	}
	num, typ, n := protowire.ConsumeTag(r.b)
	if n < 0 {
		r.err = protowire.ParseError(n)
		return false
	}
	b := r.b[n:]
	switch typ {
	case protowire.BytesType:
		r.Bytes, n = protowire.ConsumeBytes(b)
	case protowire.VarintType:
		r.Varint, n = protowire.ConsumeVarint(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		r.err = protowire.ParseError(n)
		return false
	}
	r.Num, r.Type, r.b = num, typ, b[n:]
	return true
}

// Err returns the error that ended the reading, if any.
func (r *Reader) Err() error { return r.err }
