package spokev1

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"google.golang.org/protobuf/proto"
)

// NodeResourceName is the name of the resource that describes the agent's
// own node. Service resources are named "namespace/name" and never collide
// with it.
const NodeResourceName = "node"

// ContentVersion returns the version of a resource's content: a hash of its
// deterministic encoding. Equal content gives an equal version in every
// control-plane replica running the same release.
func ContentVersion(r *Resource) (string, error) {
	var m proto.Message
	switch k := r.GetKind().(type) {
	case *Resource_Service:
		m = k.Service
	case *Resource_Node:
		m = k.Node
	default:
		return "", errors.New("resource has no content")
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return "", err
	}
	return versionOf(b), nil
}

func versionOf(content []byte) string {
	sum := sha256.Sum256(content)
	return hex.EncodeToString(sum[:12])
}
