package server

import (
	"context"
	"strconv"
	"sync"
	"time"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// conn is the state of one agent stream.
type conn struct {
	node        string
	peer        string
	connectedAt time.Time
	cancel      context.CancelCauseFunc

	mu            sync.Mutex
	nonce         uint64
	inFlight      string
	inFlightPart  part
	inFlightLast  bool
	inFlightRev   uint64
	synced        uint64
	skip          map[string]string // rejected versions, not sent again
	nacks         []*spokev1.NackStatus
	resourcesSent uint64
	responsesSent uint64
}

const keptNacks = 16

func newConn(node string, cancel context.CancelCauseFunc) *conn {
	return &conn{node: node, cancel: cancel, connectedAt: time.Now(), skip: map[string]string{}}
}

func (c *conn) nextNonce() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nonce++
	return strconv.FormatUint(c.nonce, 10)
}

func (c *conn) pending() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inFlight
}

func (c *conn) syncedRev() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced
}

func (c *conn) setSynced(rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.synced = rev
}

func (c *conn) skipped() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]string, len(c.skip))
	for k, v := range c.skip {
		out[k] = v
	}
	return out
}

func (c *conn) sent(nonce string, p part, last bool, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inFlight, c.inFlightPart, c.inFlightLast, c.inFlightRev = nonce, p, last, rev
	c.responsesSent++
	c.resourcesSent += uint64(len(p.resources))
}

// acked settles the response in flight. It returns the revision the agent
// is now synchronised to, and whether the delta is complete.
func (c *conn) acked(rej *spokev1.Rejection) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.inFlightPart
	if rej != nil {
		rejected := map[string]bool{}
		for _, n := range rej.GetResourceNames() {
			rejected[n] = true
		}
		ns := &spokev1.NackStatus{Nonce: c.inFlight, Message: rej.GetMessage(), Versions: map[string]string{}}
		for _, r := range p.resources {
			if len(rejected) == 0 || rejected[r.Name] {
				c.skip[r.Name] = r.Version
				ns.Versions[r.Name] = r.Version
			}
		}
		c.nacks = append(c.nacks, ns)
		if len(c.nacks) > keptNacks {
			c.nacks = c.nacks[len(c.nacks)-keptNacks:]
		}
	} else {
		for _, r := range p.resources {
			delete(c.skip, r.Name)
		}
	}
	c.inFlight = ""
	c.inFlightPart = part{}
	if !c.inFlightLast {
		return c.synced, false
	}
	c.synced = c.inFlightRev
	return c.synced, true
}
