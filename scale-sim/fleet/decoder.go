package fleet

import (
	"runtime"
	"sync"
	"weak"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	"github.com/spoke-proxy/spoke/nodeagent/view"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// sharedDecoder is the agents' decoder: it checks and decodes a received
// resource once for every agent that uses it. The fleet's transport hands
// its agents the same *spokev1.Resource for the same content (internCodec),
// so they share the work and the decoded service, which the datapath and
// the reconciler keep. Results are keyed by the resource's identity, never
// by its name or version alone, and are dropped when the resource is
// garbage collected. It is safe for concurrent use.
type sharedDecoder struct {
	mu      sync.Mutex
	decoded map[weak.Pointer[spokev1.Resource]]decodeResult
}

var _ agent.Decoder = (*sharedDecoder)(nil)

type decodeResult struct {
	svc *datapath.Service
	err error
}

func newSharedDecoder() *sharedDecoder {
	return &sharedDecoder{decoded: map[weak.Pointer[spokev1.Resource]]decodeResult{}}
}

// Service returns the checked, decoded service of r.
func (d *sharedDecoder) Service(r *spokev1.Resource) (*datapath.Service, error) {
	key := weak.Make(r)
	d.mu.Lock()
	res, ok := d.decoded[key]
	d.mu.Unlock()
	if ok {
		return res.svc, res.err
	}
	res.svc, res.err = view.Decoder{}.Service(r)
	d.mu.Lock()
	if _, ok := d.decoded[key]; !ok {
		d.decoded[key] = res
		runtime.AddCleanup(r, d.forget, key)
	}
	d.mu.Unlock()
	return res.svc, res.err
}

func (d *sharedDecoder) forget(key weak.Pointer[spokev1.Resource]) {
	d.mu.Lock()
	delete(d.decoded, key)
	d.mu.Unlock()
}
