package testnet

import (
	"context"
	"errors"

	"github.com/spoke-proxy/spoke/datapath"
)

// Conn is a TCP connection the lab holds open, for tests of what happens
// to established flows.
type Conn struct {
	lab    *Lab
	origin datapath.Origin
	id     int
}

// Open connects over TCP from origin like Send, and holds the connection
// open when the responder answered: Echo then exchanges data on it.
func (l *Lab) Open(ctx context.Context, origin datapath.Origin, pkt datapath.Packet) (*Conn, Result, error) {
	if pkt.Protocol != datapath.TCP {
		return nil, Result{}, errors.New("the lab holds TCP connections only")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	req, err := l.prepare(origin, pkt)
	if err != nil {
		return nil, Result{}, err
	}
	req.Op = "open"
	res, err := l.run(ctx, origin, req)
	if err != nil || res.Conn == 0 {
		return nil, res, err
	}
	return &Conn{lab: l, origin: origin, id: res.Conn}, res, nil
}

// Echo sends a line and waits for it to come back.
func (c *Conn) Echo(ctx context.Context) error {
	c.lab.mu.Lock()
	defer c.lab.mu.Unlock()
	_, err := c.lab.run(ctx, c.origin, request{Op: "echo", Conn: c.id, Timeout: c.lab.opts.Timeout})
	return err
}

// Close closes the connection.
func (c *Conn) Close() error {
	c.lab.mu.Lock()
	defer c.lab.mu.Unlock()
	_, err := c.lab.run(context.Background(), c.origin, request{Op: "close", Conn: c.id})
	return err
}
