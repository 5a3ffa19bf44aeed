package spokev1

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash"
	"slices"

	"google.golang.org/grpc"
)

// VersionsDigestHeader is the response header by which a control plane
// announces that it reads initial_versions_digest; its value is
// VersionsDigestScheme. An agent sends a digest only to a control plane
// that announced it on an earlier stream, and drops a stream whose first
// response comes without it after sending one (a control plane that
// ignored the digest answered as if the agent held nothing, and told it
// to remove nothing).
const VersionsDigestHeader = "spoke-versions-digest"

// ReadsDigests reports whether the control plane of a stream that has
// received its first response announced that it reads digests. When
// sentDigest (the stream's first request carried one) and it did not, it
// answered as if the agent held nothing, and the error is ErrDigestsUnread:
// that answer must not be applied.
func ReadsDigests(s grpc.ClientStream, sentDigest bool) (bool, error) {
	md, err := s.Header()
	if err != nil {
		return false, err
	}
	reads := slices.Contains(md.Get(VersionsDigestHeader), VersionsDigestScheme)
	if sentDigest && !reads {
		return false, ErrDigestsUnread
	}
	return reads, nil
}

// ErrDigestsUnread is the error of a stream whose control plane answered a
// digest without announcing that it reads digests.
var ErrDigestsUnread = errors.New("the control plane does not read digests of held versions; reconnecting with the versions")

// VersionsDigestScheme names how VersionsDigest is computed.
const VersionsDigestScheme = "sha256-v1"

// VersionsDigestSize is the length of a VersionsDigest.
const VersionsDigestSize = sha256.Size

// VersionsDigest returns the digest of a set of held versions, keyed by
// resource name: SHA-256 over the node resource (if held) and then every
// other resource in ascending name order, each as its name and version,
// each preceded by its length as a uvarint. Equal sets give equal digests.
func VersionsDigest(versions map[string]string) []byte {
	d := NewVersionsDigester()
	if v, ok := versions[NodeResourceName]; ok {
		d.Add(NodeResourceName, v)
	}
	names := make([]string, 0, len(versions))
	for name := range versions {
		if name != NodeResourceName {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		d.Add(name, versions[name])
	}
	return d.Sum()
}

// VersionsDigester computes a VersionsDigest from resources given in its
// order (the node resource first, then ascending names), for a holder that
// keeps them sorted.
type VersionsDigester struct {
	h   hash.Hash
	buf []byte
}

// NewVersionsDigester returns an empty digester.
func NewVersionsDigester() *VersionsDigester {
	return &VersionsDigester{h: sha256.New(), buf: make([]byte, 0, 4096)}
}

// Add adds one held resource.
func (d *VersionsDigester) Add(name, version string) {
	d.buf = binary.AppendUvarint(d.buf, uint64(len(name)))
	d.buf = append(d.buf, name...)
	d.buf = binary.AppendUvarint(d.buf, uint64(len(version)))
	d.buf = append(d.buf, version...)
	if len(d.buf) >= 4096 {
		d.h.Write(d.buf)
		d.buf = d.buf[:0]
	}
}

// Sum returns the digest of what was added.
func (d *VersionsDigester) Sum() []byte {
	d.h.Write(d.buf)
	d.buf = d.buf[:0]
	return d.h.Sum(nil)
}
