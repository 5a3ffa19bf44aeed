package server

import (
	"github.com/spoke-proxy/spoke/controlplane/store"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// part is one response's worth of a delta.
type part struct {
	resources []*store.Encoded
	removed   []string
	// revisions is the api_revisions field, shared by every part of every
	// stream (the store encodes it once).
	revisions []byte
}

// encode returns the response's wire form as slices: the nonce, every
// resource's shared framed bytes, then the removals.
func (p part) encode(nonce string) [][]byte {
	out := make([][]byte, 0, len(p.resources)+2)
	out = append(out, spokev1.AppendResponseNonce(nil, nonce))
	for _, r := range p.resources {
		out = append(out, r.Framed)
	}
	if len(p.removed) > 0 {
		var tail []byte
		for _, r := range p.removed {
			tail = spokev1.AppendResponseRemoved(tail, r)
		}
		out = append(out, tail)
	}
	if p.revisions != nil {
		out = append(out, p.revisions)
	}
	return out
}

// split cuts a delta into responses no larger than the limit. A single
// resource larger than the limit travels alone: the store publishes none
// above spokev1.MaxViewBytes, so it still fits the agent's receive limit.
func (s *Server) split(d store.Delta) []part {
	limit := s.opts.MaxResponseBytes - spokev1.ResponseOverheadBytes
	var parts []part
	cur, size := part{revisions: d.APIRevisionsField}, 0
	flush := func() {
		parts = append(parts, cur)
		cur, size = part{revisions: d.APIRevisionsField}, 0
	}
	for _, r := range d.Resources {
		if size > 0 && size+len(r.Bytes)+8 > limit {
			flush()
		}
		cur.resources = append(cur.resources, r)
		size += len(r.Bytes) + 8
	}
	for _, r := range d.Removed {
		if size > 0 && size+len(r)+8 > limit {
			flush()
		}
		cur.removed = append(cur.removed, r)
		size += len(r) + 8
	}
	flush()
	return parts
}
