package spokev1

import (
	"errors"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// fields are the field numbers of the messages the control plane writes by
// hand, read from the generated descriptors (once they are initialised) so
// that they follow the .proto files.
var fields = sync.OnceValue(func() wireFields {
	return wireFields{
		responseNonce:     fieldNumber(&StreamViewsResponse{}, "nonce"),
		responseResources: fieldNumber(&StreamViewsResponse{}, "resources"),
		responseRemoved:   fieldNumber(&StreamViewsResponse{}, "removed_resources"),
		responseRevision:  fieldNumber(&StreamViewsResponse{}, "api_revisions"),
		resourceName:      fieldNumber(&Resource{}, "name"),
		resourceVersion:   fieldNumber(&Resource{}, "version"),
		resourceService:   fieldNumber(&Resource{}, "service"),
		resourceNode:      fieldNumber(&Resource{}, "node"),
	}
})

type wireFields struct {
	responseNonce, responseResources, responseRemoved            protowire.Number
	responseRevision                                             protowire.Number
	resourceName, resourceVersion, resourceService, resourceNode protowire.Number
}

func fieldNumber(m proto.Message, name protoreflect.Name) protowire.Number {
	f := m.ProtoReflect().Descriptor().Fields().ByName(name)
	if f == nil {
		panic("spokev1: no field " + string(name))
	}
	return f.Number()
}

// FramedResource is a Resource in wire form, encoded once and shared by
// every stream that sends it.
type FramedResource struct {
	// Version is the content's version, as ContentVersion computes it.
	Version string
	// Framed is the resource as one resources entry of a
	// StreamViewsResponse: tag, length, then the encoded Resource.
	Framed []byte
	// Encoded is the tail of Framed: the Resource message alone.
	Encoded []byte
}

// FrameResource sets r's version from its content and encodes r as a
// resources entry of a StreamViewsResponse. The content is encoded once,
// for both the version and the frame.
func FrameResource(r *Resource) (FramedResource, error) {
	fs := fields()
	var field protowire.Number
	var content proto.Message
	switch k := r.GetKind().(type) {
	case *Resource_Service:
		field, content = fs.resourceService, k.Service
	case *Resource_Node:
		field, content = fs.resourceNode, k.Node
	default:
		return FramedResource{}, errors.New("resource has no content")
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(content)
	if err != nil {
		return FramedResource{}, err
	}
	r.Version = versionOf(b)
	size := protowire.SizeTag(fs.resourceName) + protowire.SizeBytes(len(r.Name)) +
		protowire.SizeTag(fs.resourceVersion) + protowire.SizeBytes(len(r.Version)) +
		protowire.SizeTag(field) + protowire.SizeBytes(len(b))
	out := make([]byte, 0, protowire.SizeTag(fs.responseResources)+protowire.SizeVarint(uint64(size))+size)
	out = protowire.AppendTag(out, fs.responseResources, protowire.BytesType)
	out = protowire.AppendVarint(out, uint64(size))
	head := len(out)
	out = protowire.AppendTag(out, fs.resourceName, protowire.BytesType)
	out = protowire.AppendString(out, r.Name)
	out = protowire.AppendTag(out, fs.resourceVersion, protowire.BytesType)
	out = protowire.AppendString(out, r.Version)
	out = protowire.AppendTag(out, field, protowire.BytesType)
	out = protowire.AppendBytes(out, b)
	return FramedResource{Version: r.Version, Framed: out, Encoded: out[head:]}, nil
}

// AppendResponseNonce appends a StreamViewsResponse's nonce field to b.
func AppendResponseNonce(b []byte, nonce string) []byte {
	b = protowire.AppendTag(b, fields().responseNonce, protowire.BytesType)
	return protowire.AppendString(b, nonce)
}

// AppendResponseRemoved appends one removed_resources entry of a
// StreamViewsResponse to b.
func AppendResponseRemoved(b []byte, name string) []byte {
	b = protowire.AppendTag(b, fields().responseRemoved, protowire.BytesType)
	return protowire.AppendString(b, name)
}

// AppendResponseRevisions appends a StreamViewsResponse's api_revisions
// field to b; nothing when rev is nil.
func AppendResponseRevisions(b []byte, rev *ApiRevisions) []byte {
	if rev == nil {
		return b
	}
	m, err := proto.MarshalOptions{Deterministic: true}.Marshal(rev)
	if err != nil {
		panic("spokev1: encoding ApiRevisions: " + err.Error()) // three varints cannot fail
	}
	b = protowire.AppendTag(b, fields().responseRevision, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// AtLeast reports whether r has reached o in every kind; a nil o is
// reached by anything.
func (r *ApiRevisions) AtLeast(o *ApiRevisions) bool {
	return r.GetServices() >= o.GetServices() && r.GetEndpointSlices() >= o.GetEndpointSlices() && r.GetNodes() >= o.GetNodes()
}
