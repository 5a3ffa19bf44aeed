package agent

import (
	"fmt"
	"runtime"
	"sync"
	"weak"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/nodeagent/view"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// SharedDecoder checks a received resource's version against its content
// and decodes it once per resource, for every agent that uses it. It is for
// a process that runs many agents (the scale simulator) whose transport
// hands its agents the same *spokev1.Resource for the same content: they
// then share the work and the decoded service, which the datapath keeps.
// An agent on a real node needs none. Results are keyed by the resource's
// identity, never by its name or version alone, and are dropped when the
// resource is garbage collected. It is safe for concurrent use.
type SharedDecoder struct {
	mu      sync.Mutex
	decoded map[weak.Pointer[spokev1.Resource]]decodeResult
}

type decodeResult struct {
	svc *datapath.Service
	err error
}

// NewSharedDecoder returns an empty SharedDecoder.
func NewSharedDecoder() *SharedDecoder {
	return &SharedDecoder{decoded: map[weak.Pointer[spokev1.Resource]]decodeResult{}}
}

// Service returns the checked, decoded service of r. Node resources are
// not kept: each agent has its own.
func (d *SharedDecoder) Service(r *spokev1.Resource) (*datapath.Service, error) {
	key := weak.Make(r)
	d.mu.Lock()
	res, ok := d.decoded[key]
	d.mu.Unlock()
	if ok {
		return res.svc, res.err
	}
	res.err = checkVersion(r)
	if res.err == nil {
		res.svc, res.err = view.Service(r)
	}
	d.mu.Lock()
	if _, ok := d.decoded[key]; !ok {
		d.decoded[key] = res
		runtime.AddCleanup(r, d.forget, key)
	}
	d.mu.Unlock()
	return res.svc, res.err
}

// Len returns the number of resources remembered.
func (d *SharedDecoder) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.decoded)
}

func (d *SharedDecoder) forget(key weak.Pointer[spokev1.Resource]) {
	d.mu.Lock()
	delete(d.decoded, key)
	d.mu.Unlock()
}

// checkVersion reports whether a resource's version is the hash of its
// content.
func checkVersion(r *spokev1.Resource) error {
	if v, err := spokev1.ContentVersion(r); err != nil || v != r.GetVersion() {
		return fmt.Errorf("version %q does not match content", r.GetVersion())
	}
	return nil
}
