package server

import (
	"errors"
	"fmt"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Limits on what an agent may send.
const (
	maxInitialResources = 1 << 20
	maxNameLen          = 512
	maxVersionLen       = 64
	maxNodeNameLen      = 253
	maxRejectionLen     = 4096
)

func validateFirst(req *spokev1.StreamViewsRequest) error {
	n := req.GetNodeName()
	if len(n) > maxNodeNameLen {
		return fmt.Errorf("node name longer than %d bytes", maxNodeNameLen)
	}
	if req.GetResponseNonce() != "" || req.GetError() != nil {
		return errors.New("first request acknowledges nothing")
	}
	if d := req.GetInitialVersionsDigest(); d != nil {
		if len(d) != spokev1.VersionsDigestSize {
			return fmt.Errorf("initial_versions_digest of %d bytes, not %d", len(d), spokev1.VersionsDigestSize)
		}
		if len(req.GetInitialResourceVersions()) > 0 {
			return errors.New("both initial_versions_digest and initial_resource_versions")
		}
	}
	return validateHeld(req.GetInitialResourceVersions())
}

// validateVersions checks the request that answers send_initial_versions:
// the versions alone.
func validateVersions(req *spokev1.StreamViewsRequest) error {
	if req.GetResponseNonce() != "" || req.GetError() != nil || req.GetInitialVersionsDigest() != nil || req.GetInitialApiRevisions() != nil || req.GetNodeName() != "" {
		return errors.New("the answer to send_initial_versions carries initial_resource_versions alone")
	}
	return validateHeld(req.GetInitialResourceVersions())
}

func validateHeld(held map[string]string) error {
	if len(held) > maxInitialResources {
		return fmt.Errorf("more than %d initial resources", maxInitialResources)
	}
	for name, v := range held {
		if len(name) > maxNameLen || len(v) > maxVersionLen || name == "" {
			return fmt.Errorf("initial resource %.64q: bad name or version", name)
		}
	}
	return nil
}

func validateAck(req *spokev1.StreamViewsRequest) error {
	if len(req.GetInitialResourceVersions()) > 0 || req.GetInitialVersionsDigest() != nil {
		return errors.New("initial_resource_versions or initial_versions_digest after the first request")
	}
	if req.GetResponseNonce() == "" {
		return errors.New("request acknowledges no nonce")
	}
	if rej := req.GetError(); rej != nil {
		if len(rej.GetMessage()) > maxRejectionLen || len(rej.GetResourceNames()) > maxInitialResources {
			return errors.New("rejection too large")
		}
	}
	return nil
}
